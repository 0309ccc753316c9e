"""Process every pending erasure request, grouped per model; what the scheduled deployment runs.

    python -m flows.process              # or: unlearn process
    unlearn serve                        # register the cron deployment on the Prefect server

Exactly once, across any number of workers: a worker takes a model's lease in S3 before touching
its requests (so `champion` moves one request at a time), then claims each request with a
conditional write. A transient failure (S3 or MLflow down) leaves the request pending for the
next run; bad input or a failed verification ends it as failed, with the reason.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import clip_unlearn  # noqa: F401
from prefect import flow, get_run_logger

from clip_unlearn.config import load_params
from clip_unlearn.erasure.eventlog import Lease, LeaseLost
from clip_unlearn.erasure.requests import RequestStore
from clip_unlearn.erasure.steps import is_transient
from clip_unlearn.storage import scrub, safe_key
from flows.erase import erase


def pending_by_model(store: RequestStore) -> dict[str, list[str]]:
    groups = defaultdict(list)
    for rid in store.ids():
        if store.claimable(store.state(rid)):
            groups[store.get(rid).model].append(rid)
    return dict(groups)


def process_one(store: RequestStore, rid: str, params_path: str, ttl: float, max_attempts: int) -> dict | None:
    log = get_run_logger()
    claim = store.claim(rid, ttl=ttl, max_attempts=max_attempts)
    if claim is None:
        return None   # another worker has it, it is finished, or it ran out of attempts
    req = store.get(rid)
    try:
        out = erase(request=req.model_dump(), params_path=params_path)
    except Exception as e:  # noqa: BLE001  (every outcome is recorded on the request)
        reason = scrub(f"{type(e).__name__}: {e}")[:2000]
        state = "retry" if is_transient(e) else "failed"
        log.warning("request %s: %s (%s)", rid, state, reason)
        claim.finish(state, reason=reason)
        return {"id": rid, "state": state, "reason": reason}
    state = "done" if out["verdict"] == "passed" else "failed"
    detail = {"version": out["version"], "certificate": out["certificate"], "promoted": out["promoted"]}
    if state == "failed":
        detail["reason"] = (f"verification failed ({'; '.join(out['failed_checks'])}); "
                            f"v{out['version']} stays a candidate")
    if not claim.finish(state, **detail):
        log.warning("request %s: finished, but another worker had taken it over", rid)
    return {"id": rid, "state": state, **detail}


@flow(name="process-requests", log_prints=True)
def process_requests(params_path: str = "params.yaml", max_requests: int = 0) -> list[dict]:
    params = load_params(params_path)
    e = params.erase
    store = RequestStore(params.storage)
    done: list[dict] = []
    for model, ids in sorted(pending_by_model(store).items()):
        lease = Lease(params.storage, safe_key("locks", "models", model), ttl=e.lease_seconds, client=store.client)
        try:
            lease.acquire(wait=e.model_wait_seconds)
        except TimeoutError as err:
            print(f"{model}: {err}; its requests stay pending for the next run")
            continue
        try:
            for rid in ids:
                if max_requests and len(done) >= max_requests:
                    break
                out = process_one(store, rid, params_path, e.lease_seconds, e.max_attempts)
                if out:
                    done.append(out)
                    print(f"{rid}: {out['state']}" + (f" (v{out['version']})" if out.get("version") else ""))
                lease.renew()
        except LeaseLost as err:
            print(f"{model}: {err}")
        finally:
            lease.release()
    print(f"processed {len(done)} request(s)")
    return done


if __name__ == "__main__":
    process_requests(*(sys.argv[1:2] or ["params.yaml"]))
