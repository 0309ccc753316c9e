"""Process every pending erasure request, grouped per model; what the scheduled deployment runs.

    python -m flows.process              # or: unlearn process
    unlearn serve                        # register the cron deployment on the Prefect server

Exactly once, across any number of workers: a worker takes a model's lease in S3 before touching
its requests (so `champion` moves one request at a time), then claims each request with a
conditional write (pipeline/dispatch.py). A transient failure (S3 or MLflow down) leaves the request
pending for the next run; bad input or a failed verification ends it as failed, with the reason.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

import clip_unlearn  # noqa: F401
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.dispatch import pending_by_model, run_claimed
from clip_unlearn.pipeline.eventlog import Lease, LeaseLost
from clip_unlearn.pipeline.request_store import RequestStore
from clip_unlearn.pipeline.storage import safe_key
from flows.erase import erase


@flow(name="process-requests", log_prints=True)
def process_requests(params_path: str = "params.yaml", max_requests: int = 0) -> list[dict]:
    params = load_params(params_path)
    e = params.erase
    store = RequestStore(params.storage)
    log = get_run_logger().warning
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
                out = run_claimed(store, rid, e.lease_seconds, e.max_attempts,
                                  lambda req: erase(request=req.model_dump(), params_path=params_path), log)
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
