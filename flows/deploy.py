"""The scheduled deployment: `process-requests` on a cron, run by a worker of a process work pool.

    unlearn serve                          # create/update it from params.yaml erase.schedule
    unlearn serve --cron "*/5 * * * *" --run-now

Needs the Prefect server and worker of `bash infra/stack.sh start` (PREFECT_API_URL set). The
flow code is taken from this checkout (the worker runs in it, with the stack's environment).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.deployments import run_deployment
from prefect.schedules import Cron

from clip_unlearn.pipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]


def deploy(params_path: str = "params.yaml", cron: str | None = None, work_pool: str | None = None,
           name: str | None = None) -> dict:
    sched = load_params(params_path).erase.schedule
    cron, pool, name = cron or sched.cron, work_pool or sched.work_pool, name or sched.deployment
    source = flow.from_source(source=str(REPO), entrypoint="flows/process.py:process_requests")
    deployment_id = source.deploy(name=name, work_pool_name=pool, schedules=[Cron(cron, timezone=sched.timezone)],
                                  parameters={"params_path": str(Path(params_path).resolve())},
                                  description="Process pending erasure requests (clip-unlearn)",
                                  tags=["clip-unlearn", "erasure"], print_next_steps=False, build=False, push=False)
    return {"id": str(deployment_id), "name": f"process-requests/{name}", "cron": cron, "work_pool": pool}


def run_now(name: str, timeout: float | None = None) -> dict:
    fr = run_deployment(name=name, timeout=timeout)
    return {"flow_run": str(fr.id), "state": fr.state.type.value if fr.state else None}
