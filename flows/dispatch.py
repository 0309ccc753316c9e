"""Start erasure requests on Prefect: one flow run per request, one run at a time per model.

    info = dispatch_request(params, "gdpr-2026-0042")   # `unlearn submit`, and the sweeper for each pending id
    info["flow_run"]["name"]                            # erase-gdpr-2026-0042

Each model gets its own deployment, `erase-request/<base>-<model>`, copied on demand from the base
deployment `erase-request/<erase.schedule.erase_deployment>` (made by `unlearn serve` or
`prefect deploy`) with `concurrency_limit=1` and the ENQUEUE collision strategy. The server then
keeps a model's second run Scheduled (AwaitingConcurrencySlot) until the first one ends: a waiting
run holds no worker, so workers take other models' runs meanwhile, and the running flow's engine
renews the slot's lease for as long as it runs. The idempotency key comes from the S3 log
(pipeline/dispatch.py attempt_key), so a resubmit, two submitters or the sweeper get one run.
"""

from __future__ import annotations

from typing import Callable

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.dispatch import dispatch
from clip_unlearn.pipeline.request_store import RequestStore

FLOW = "erase-request"
# What a per-model deployment copies from the base; a copy that differs is brought up to date.
COPIED = ("entrypoint", "path", "pull_steps", "job_variables", "parameters", "work_pool_name", "work_queue_name",
          "parameter_openapi_schema", "enforce_parameter_schema", "description")


def base_deployment(params: Params) -> str:
    return f"{FLOW}/{params.erase.schedule.erase_deployment}"


def unavailable(params: Params) -> str | None:
    """Why requests cannot be started on Prefect now (no server configured, server down, no base
    deployment), or None when they can."""
    if not get_current_settings().api.url:
        return "no Prefect server configured (PREFECT_API_URL)"
    try:
        with get_client(sync_client=True) as c:
            c.read_deployment_by_name(base_deployment(params))
    except ObjectNotFound:
        return f"no deployment {base_deployment(params)} on the Prefect server (unlearn serve, or prefect deploy)"
    except Exception as e:  # noqa: BLE001  (unreachable, refused, timed out: all mean "not now")
        return f"the Prefect server did not answer ({type(e).__name__}: {e})"
    return None


def model_deployment(client: SyncPrefectClient, base: str, model: str) -> str:
    """`erase-request/<base>-<model>` (concurrency 1, ENQUEUE), made from the base deployment or
    brought up to date with it; returns its name. Racing callers are fine: creating upserts."""
    b = client.read_deployment_by_name(base)
    flow_name, base_name = base.split("/", 1)
    name = f"{base_name}-{model}"
    try:
        d = client.read_deployment_by_name(f"{flow_name}/{name}")
        if all(getattr(d, k) == getattr(b, k) for k in COPIED) and d.concurrency_options is not None:
            return f"{flow_name}/{name}"
        paused = d.paused
    except ObjectNotFound:
        paused = b.paused
    try:
        client.create_deployment(
            flow_id=b.flow_id, name=name, **{k: getattr(b, k) for k in COPIED}, paused=paused,
            tags=sorted({*b.tags, f"model:{model}"}), concurrency_limit=1,
            concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))
    except ObjectAlreadyExists:
        pass
    return f"{flow_name}/{name}"


def start_run(deployment: str, rid: str) -> Callable[[str], dict]:
    """start(key) for pipeline.dispatch.dispatch: the flow run of `deployment` with that idempotency key."""

    def start(key: str) -> dict:
        fr = run_deployment(name=deployment, parameters={"request_id": rid}, idempotency_key=key,
                            flow_run_name=f"erase-{rid}", timeout=0, as_subflow=False, tags=[f"request:{rid}"])
        return {"id": str(fr.id), "name": fr.name, "deployment": deployment,
                "state": fr.state.name if fr.state else "Scheduled", "final": bool(fr.state and fr.state.is_final())}

    return start


def dispatch_request(params: Params, rid: str, store: RequestStore | None = None, log: Callable[[str], None] = print,
                     _deployments: dict | None = None) -> dict | None:
    """Start request `rid` on its model's deployment, or return the run already started for it;
    None when it does not wait (finished, or running under a live claim)."""
    store = store or RequestStore(params.storage)
    model = store.get(rid).model
    deployments = {} if _deployments is None else _deployments
    if model not in deployments:
        with get_client(sync_client=True) as c:
            deployments[model] = model_deployment(c, base_deployment(params), model)
    return dispatch(store, rid, start_run(deployments[model], rid), params.erase.max_attempts, log)


def sweep(params: Params, store: RequestStore | None = None, log: Callable[[str], None] = print,
          max_requests: int = 0) -> list[dict]:
    """dispatch_request for every request that waits (idempotent: started ones come back as they are)."""
    store = store or RequestStore(params.storage)
    out, deployments = [], {}
    for rid in store.ids():
        if max_requests and len(out) >= max_requests:
            break
        if not store.claimable(store.state(rid)):
            continue
        info = dispatch_request(params, rid, store, log, deployments)
        if info:
            out.append(info)
            fr = info.get("flow_run") or {}
            log(f"{rid}: {info['state']} -> flow run {fr.get('name')} ({fr.get('state')}) on {fr.get('deployment')}")
    return out
