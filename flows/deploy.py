"""The deployments on the local stack's Prefect server (`unlearn serve`):

- `erase-request/<erase.schedule.erase_deployment>` (erase-cpu): one flow run per request. It is the
  base that flows/dispatch.py copies per model (`erase-cpu-<model>`, one run at a time); `unlearn
  submit` starts a request's run on that copy right away.
- `process-requests/<erase.schedule.deployment>`: the cron sweeper; it starts whatever waits.

    unlearn serve                          # create/update both from params.yaml erase.schedule
    unlearn serve --cron "*/5 * * * *" --run-now

Needs the Prefect server and worker of `bash infra/stack.sh start` (PREFECT_API_URL set). The flow
code is taken from this checkout (the stack's worker runs in it, with the stack's environment).
Remote workers get theirs from a git clone or an image instead: prefect.yaml at the repository root.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.deployments import run_deployment
from prefect.schedules import Cron

from clip_unlearn.pipeline.config import load_params
from flows.dispatch import FLOW

REPO = Path(__file__).resolve().parents[1]


def deploy_erase(params_path: str, work_pool: str, name: str) -> str:
    """The base deployment of erase-request (never run itself: dispatch copies it per model)."""
    return str(flow.from_source(source=str(REPO), entrypoint="flows/erase.py:erase_request").deploy(
        name=name, work_pool_name=work_pool, parameters={"params_path": str(Path(params_path).resolve())},
        description="One erasure request per flow run (clip-unlearn); copied per model, one run at a time",
        tags=["clip-unlearn", "erasure"], build=False, push=False, print_next_steps=False))


def deploy(params_path: str = "params.yaml", cron: str | None = None, work_pool: str | None = None,
           name: str | None = None, erase_name: str | None = None) -> dict:
    sched = load_params(params_path).erase.schedule
    cron, pool = cron or sched.cron, work_pool or sched.work_pool
    name, erase_name = name or sched.deployment, erase_name or sched.erase_deployment
    erase_id = deploy_erase(params_path, pool, erase_name)
    sweeper_id = flow.from_source(source=str(REPO), entrypoint="flows/process.py:process_requests").deploy(
        name=name, work_pool_name=pool, schedules=[Cron(cron, timezone=sched.timezone)],
        parameters={"params_path": str(Path(params_path).resolve()), "mode": "dispatch"}, build=False, push=False,
        description="Start every pending erasure request (clip-unlearn)", tags=["clip-unlearn", "erasure"],
        print_next_steps=False)
    return {"id": str(sweeper_id), "name": f"process-requests/{name}", "cron": cron, "work_pool": pool,
            "erase_id": erase_id, "erase_name": f"{FLOW}/{erase_name}"}


def run_now(name: str, timeout: float | None = None) -> dict:
    fr = run_deployment(name=name, timeout=timeout)
    return {"flow_run": str(fr.id), "state": fr.state.type.value if fr.state else None}
