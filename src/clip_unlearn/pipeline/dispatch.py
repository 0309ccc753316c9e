"""Working through the request store without Prefect: which requests wait, and one request run
under a claim with its outcome recorded (done, failed, or retry for a transient failure).

    for model, ids in pending_by_model(store).items(): ...
    out = run_claimed(store, rid, ttl=900, max_attempts=3, run=lambda req: erase(req.model_dump()))

flows/process.py drives these from Prefect; the claim is a conditional write in S3, so any number of
workers can call them at once and each request is run by one of them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from clip_unlearn.pipeline.errors import is_transient
from clip_unlearn.pipeline.request_store import ErasureRequest, RequestStore
from clip_unlearn.pipeline.storage import scrub


def pending_by_model(store: RequestStore) -> dict[str, list[str]]:
    groups = defaultdict(list)
    for rid in store.ids():
        if store.claimable(store.state(rid)):
            groups[store.get(rid).model].append(rid)
    return dict(groups)


def run_claimed(store: RequestStore, rid: str, ttl: float, max_attempts: int, run: Callable[[ErasureRequest], dict],
                log: Callable[[str], None] = print) -> dict | None:
    """Claim `rid`, run it, record the outcome. None: another worker has it, it is finished, or it ran
    out of attempts. Every exception is recorded on the request (retry if transient, else failed)."""
    claim = store.claim(rid, ttl=ttl, max_attempts=max_attempts)
    if claim is None:
        return None
    req = store.get(rid)
    try:
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
