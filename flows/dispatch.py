"""Start erasure requests on Prefect: one flow run per request, one run at a time per model.

    info = dispatch_request(params, "gdpr-2026-0042")   # `unlearn submit`, and the sweeper for each pending id
    info["flow_run"]["name"]                            # erase-gdpr-2026-0042

Each model gets its own deployment, `erase-request/<base>-<model>`, copied on demand from the base
deployment `erase-request/<erase.schedule.erase_deployment>` (made by `unlearn serve` or
`prefect deploy`), on a work queue of its own in the base's pool (same name, concurrency limit 1).
Two Prefect limits keep a model to one run at a time. The queue's limit is applied when a worker
asks for runs: while a model's run is Pending or Running, its other runs are not handed out, so
an idle worker gets another model's run in its next poll instead of being turned away by each
queued run of a busy model, one poll at a time. The deployment's limit (1, ENQUEUE) is the one
that holds under races: a second run that reaches the server is kept Scheduled
(AwaitingConcurrencySlot), and the running flow's engine renews the slot's lease while it runs.
The idempotency key comes from the S3 log (pipeline/dispatch.py attempt_key), so a resubmit, two
submitters or the sweeper get one run. A run whose S3 claim expired while Prefect still shows it
Running (its worker is gone with it) is marked Crashed before the next attempt starts: otherwise
it would hold its model's queue for good.
"""

from __future__ import annotations

from typing import Callable

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Crashed

from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.dispatch import dispatch
from clip_unlearn.pipeline.request_store import RequestStore

FLOW = "erase-request"
# What a per-model deployment copies from the base; a copy that differs is brought up to date.
COPIED = ("entrypoint", "path", "pull_steps", "job_variables", "parameters", "work_pool_name",
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


def model_queue(client: SyncPrefectClient, pool: str, name: str) -> str:
    """The work queue `name` in `pool` with concurrency limit 1, made or set so; returns its name."""
    try:
        q = client.read_work_queue_by_name(name, work_pool_name=pool)
    except ObjectNotFound:
        try:
            client.create_work_queue(name=name, work_pool_name=pool, concurrency_limit=1,
                                     description="One erasure at a time for this model (clip-unlearn).")
            return name
        except ObjectAlreadyExists:
            q = client.read_work_queue_by_name(name, work_pool_name=pool)
    if q.concurrency_limit != 1:
        client.update_work_queue(q.id, concurrency_limit=1)
    return name


def model_deployment(client: SyncPrefectClient, base: str, model: str) -> str:
    """`erase-request/<base>-<model>` (concurrency 1, ENQUEUE, on its own queue of limit 1), made
    from the base deployment or brought up to date with it; returns its name. Racing callers are
    fine: creating upserts."""
    b = client.read_deployment_by_name(base)
    flow_name, base_name = base.split("/", 1)
    name = f"{base_name}-{model}"
    queue = model_queue(client, b.work_pool_name, name)
    try:
        d = client.read_deployment_by_name(f"{flow_name}/{name}")
        if (all(getattr(d, k) == getattr(b, k) for k in COPIED) and d.work_queue_name == queue
                and d.concurrency_options is not None):
            return f"{flow_name}/{name}"
        paused = d.paused
    except ObjectNotFound:
        paused = b.paused
    try:
        client.create_deployment(
            flow_id=b.flow_id, name=name, **{k: getattr(b, k) for k in COPIED}, work_queue_name=queue,
            paused=paused, tags=sorted({*b.tags, f"model:{model}"}), concurrency_limit=1,
            concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))
    except ObjectAlreadyExists:
        pass
    return f"{flow_name}/{name}"


def crash_lost_runs(client: SyncPrefectClient, rid: str, expired_at: float) -> list[str]:
    """Mark Crashed the flow runs of `rid` that Prefect still shows Pending or Running though they
    were made before its S3 claim expired (at `expired_at`, epoch s): nobody is left to report them.
    A run made after that is a new attempt and is left alone. Returns their names."""
    lost = []
    for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"request:{rid}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])))):
        if fr.created and fr.created.timestamp() < expired_at:
            client.set_flow_run_state(fr.id, Crashed(message=(
                f"its claim on request {rid} expired at {expired_at:.0f} (epoch s) without a renewal: the run "
                "is lost with its worker; clip-unlearn starts the next attempt")), force=True)
            lost.append(fr.name)
    return lost


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

    def lost(expired_at: float) -> None:
        with get_client(sync_client=True) as c:
            for name in crash_lost_runs(c, rid, expired_at):
                log(f"request {rid}: flow run {name} marked Crashed (its claim expired; its worker is gone)")

    return dispatch(store, rid, start_run(deployments[model], rid), params.erase.max_attempts, log, lost)


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
