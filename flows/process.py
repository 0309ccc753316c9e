"""The sweeper: what the cron deployment `process-requests` runs, and `unlearn process`.

    python -m flows.process [params.yaml]      # or: unlearn process
    unlearn serve                              # deploy erase-request and this sweeper on the Prefect server

Two modes, one outcome (each request done once, a model's requests one at a time):
- dispatch: start every waiting request's own flow run on Prefect (flows/dispatch.py), exactly as
  `unlearn submit` does, with the same idempotency keys: a request already started comes back as it is.
- here: run the waiting requests in this process (machines without a Prefect server). A model whose
  S3 lease another worker holds is skipped, never waited for; the lease and the claims are renewed
  while a job runs (pipeline/dispatch.py process_here).
`auto` (the default) dispatches when a Prefect server with the base deployment answers, else runs here.
A transient failure (S3 or MLflow down) leaves a request to retry; bad input or a failed
verification ends it as failed, with the reason.
"""

from __future__ import annotations

import sys

from prefect import flow

import flows  # noqa: F401  (first: a git clone's own src/, see flows/__init__.py)
import clip_unlearn  # noqa: F401
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.dispatch import process_here
from clip_unlearn.pipeline.request_store import RequestStore
from flows.dispatch import sweep, unavailable
from flows.erase import erase

MODES = ("auto", "dispatch", "here")


@flow(name="process-requests", log_prints=True)
def process_requests(params_path: str = "params.yaml", max_requests: int = 0, mode: str = "auto") -> list[dict]:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
    params = load_params(params_path)
    e = params.erase
    store = RequestStore(params.storage)
    if mode != "here":
        why = unavailable(params)
        if why is None:
            out = sweep(params, store, log=print, max_requests=max_requests)
            print(f"started or found the flow runs of {len(out)} waiting request(s)")
            return out
        if mode == "dispatch":
            raise RuntimeError(f"cannot dispatch: {why}")
        print(f"running pending requests here: {why}")
    done = process_here(store, e.lease_seconds, e.max_attempts,
                        lambda req: erase(request=req.model_dump(), params_path=params_path), print, max_requests)
    print(f"processed {len(done)} request(s)")
    return done


if __name__ == "__main__":
    process_requests(*(sys.argv[1:2] or ["params.yaml"]), mode=(sys.argv[2:3] or ["auto"])[0])
