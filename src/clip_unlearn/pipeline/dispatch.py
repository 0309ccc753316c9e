"""Working through the request store without Prefect: which requests wait, one request run under a
claim kept alive by a heartbeat, the in-process loop, and the idempotent start of a request's run.

    for model, ids in pending_by_model(store).items(): ...
    out = run_claimed(store, rid, ttl=900, max_attempts=3, run=lambda req: erase(req.model_dump()))
    done = process_here(store, ttl=900, max_attempts=3, run=...)        # `unlearn process --here`
    started = dispatch(store, rid, start=lambda key: ..., max_attempts=3)  # flows/dispatch.py gives start

The claim is a conditional write in S3, so any number of workers can call these at once and each
request is run by one of them. flows/erase.py (erase-request) and flows/process.py drive them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from clip_unlearn.pipeline.errors import is_transient
from clip_unlearn.pipeline.eventlog import Lease
from clip_unlearn.pipeline.heartbeat import Heartbeat
from clip_unlearn.pipeline.request_store import ErasureRequest, RequestStore
from clip_unlearn.pipeline.storage import safe_key, scrub


def pending_by_model(store: RequestStore) -> dict[str, list[str]]:
    groups = defaultdict(list)
    for rid in store.ids():
        if store.claimable(store.state(rid)):
            groups[store.get(rid).model].append(rid)
    return dict(groups)


def beat_interval(ttl: float) -> float:
    """How often a running job renews what it holds: a third of the TTL, so two beats may fail."""
    return ttl / 3


def run_claimed(store: RequestStore, rid: str, ttl: float, max_attempts: int, run: Callable[[ErasureRequest], dict],
                log: Callable[[str], None] = print) -> dict | None:
    """Claim `rid`, run it with the claim renewed every ttl/3 s, record the outcome. None: another
    worker has it, it is finished, or it ran out of attempts. Every exception is recorded on the
    request (retry if transient, else failed)."""
    claim = store.claim(rid, ttl=ttl, max_attempts=max_attempts)
    if claim is None:
        return None
    req = store.get(rid)
    try:
        with Heartbeat(beat_interval(ttl), claim.renew, log=log, name=f"claim-{rid}"):
            out = run(req)
    except Exception as e:  # noqa: BLE001  (every outcome is recorded on the request)
        reason = scrub(f"{type(e).__name__}: {e}")[:2000]
        state = "retry" if is_transient(e) else "failed"
        log(f"request {rid}: {state} ({reason})")
        claim.finish(state, reason=reason)
        return {"id": rid, "state": state, "reason": reason}
    state = "done" if out["verdict"] == "passed" else "failed"
    detail = {"version": out["version"], "certificate": out["certificate"], "promoted": out["promoted"]}
    if state == "failed":
        detail["reason"] = (f"verification failed ({'; '.join(out['failed_checks'])}); "
                            f"v{out['version']} stays a candidate")
    if not claim.finish(state, **detail):
        log(f"request {rid}: finished, but another worker had taken it over")
    return {"id": rid, "state": state, **detail}


def process_here(store: RequestStore, ttl: float, max_attempts: int, run: Callable[[ErasureRequest], dict],
                 log: Callable[[str], None] = print, max_requests: int = 0) -> list[dict]:
    """Run the pending requests in this process, one model at a time: this worker takes the model's
    lease in S3 (so `champion` moves one request at a time) or, if another worker holds it, skips
    the model at once: its holder or a later pass does those requests. The lease and each claim are
    renewed while a job runs. Passes repeat while they find requests not yet tried in this call."""
    done: list[dict] = []
    tried: set[str] = set()
    while True:
        progressed = False
        for model, ids in sorted(pending_by_model(store).items()):
            ids = [i for i in ids if i not in tried]
            if not ids or (max_requests and len(done) >= max_requests):
                continue
            lease = Lease(store.cfg, safe_key("locks", "models", model), ttl=ttl, client=store.client)
            if not lease.try_acquire():
                log(f"{model}: another worker holds its lease; its {len(ids)} request(s) stay pending for now")
                continue
            try:
                with Heartbeat(beat_interval(ttl), lease.renew, log=log, name=f"lease-{model}") as beat:
                    for rid in ids:
                        if (max_requests and len(done) >= max_requests) or beat.lost:
                            break
                        tried.add(rid)
                        out = run_claimed(store, rid, ttl, max_attempts, run, log)
                        if out:
                            done.append(out)
                            progressed = True
                            log(f"{rid}: {out['state']}" + (f" (v{out['version']})" if out.get("version") else ""))
            finally:
                lease.release()
        if not progressed or (max_requests and len(done) >= max_requests):
            return done


def attempt_key(rid: str, attempt: int) -> str:
    """The idempotency key of a request's n-th attempt: every starter (submit, sweeper) computes the
    same key from the S3 log, so they get the same flow run back."""
    return f"erase-{rid}-a{attempt}"


def dispatch(store: RequestStore, rid: str, start: Callable[[str], dict], max_attempts: int,
             log: Callable[[str], None] = print, lost: Callable[[float], None] | None = None) -> dict | None:
    """Start the run of a request that waits, or find the one already started. None if it does not
    wait (finished, or running under a live claim).

    `start(key)` makes a run with idempotency key `key`, or returns the run that key made before:
    {"id", "name", "state", "final"}. The key is attempt_key(rid, attempts in the S3 log + 1). A run
    found final (crashed, failed, cancelled, or completed without finishing the request) while the
    request still waits moves on to the next key; after `max_attempts` such runs the request is
    marked failed. `lost(expired_at)` is called first when the request was claimed and the claim
    expired unrenewed (epoch s): the run that held it is gone, whatever its orchestrator still shows."""
    st = store.state(rid)
    if not store.claimable(st):
        return None
    if lost and st["state"] == "running":
        lost(st["last"].get("until", 0))
    first = st["attempts"] + 1
    run = None
    for attempt in range(first, first + max_attempts):
        key = attempt_key(rid, attempt)
        run = start(key)
        if not run["final"]:
            return {"id": rid, "state": "dispatched", "key": key, "flow_run": run}
        st = store.state(rid)
        if not store.claimable(st):   # it finished (or was claimed) while we looked
            return {"id": rid, "state": st["state"], "key": key, "flow_run": run}
        log(f"request {rid}: flow run {run['name']} ({key}) ended {run['state']} without finishing it; next attempt")
    reason = (f"{max_attempts} flow runs ended without finishing the request (last: {run['name']}, "
              f"{run['state']}); see the Prefect UI")
    store.give_up(rid, reason)
    log(f"request {rid}: failed ({reason})")
    return {"id": rid, "state": "failed", "reason": reason, "flow_run": run}
