"""The local stack as users run it (infra/stack.sh: S3, MLflow, Prefect server, work pool and
worker), on free ports in a temporary folder, driven through the `unlearn` CLI. Slow (~2 min)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from servers import free_base_port, free_port, stop, track

REPO = Path(__file__).resolve().parents[1]
UNLEARN = str(Path(sys.executable).parent / "unlearn")


def _stack_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PREFECT_"))}
    env.update(CLIP_UNLEARN_STACK_DIR=str(tmp_path / "stack"), CLIP_UNLEARN_S3_PORT=str(free_base_port()),
               CLIP_UNLEARN_MLFLOW_PORT=str(free_port()), CLIP_UNLEARN_PREFECT_PORT=str(free_port()),
               CLIP_UNLEARN_WORK_POOL=f"test-{uuid.uuid4().hex[:6]}", CLIP_UNLEARN_VENV=str(Path(sys.executable).parents[1]))
    return env


def _with_stack_env(env: dict) -> dict:
    out = subprocess.run(["bash", "infra/stack.sh", "env"], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    env = dict(env)
    for line in out.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = shlex.split(v)[0] if v else ""
    return env


def _cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([UNLEARN, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"unlearn {' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.mark.slow
def test_scheduled_deployment_processes_a_pending_request(tmp_path, tiny_params):
    from clip_unlearn.core.models import load_model, save_model

    env = _stack_env(tmp_path)
    # registered before it starts: an interrupted start still leaves pid files for `stop` to read
    stop_stack = track(lambda: subprocess.run(["bash", "infra/stack.sh", "stop"], cwd=REPO, env=env, timeout=120))
    try:
        subprocess.run(["bash", "infra/stack.sh", "start"], cwd=REPO, env=env, check=True, timeout=300)
        env = _with_stack_env(env)
        params = json.loads(tiny_params.model_dump_json())
        params["forget"]["method"] = "projection"
        params["gate"].update(forget_max=None, retain_drop_max=None, other_drop_max=None, relearn_forget_max=1.0)
        params["assurance"].update(relearn_steps=2, relearn_batch_size=8, relearn_eval_every=1, probe_max_iter=10)
        params["erase"].update(workdir=str(tmp_path / "runs"), lease_seconds=120)
        params["erase"]["schedule"]["work_pool"] = env["CLIP_UNLEARN_WORK_POOL"]
        ppath = tmp_path / "params.yaml"
        ppath.write_text(yaml.safe_dump(params))
        model_dir = save_model(load_model("clip-ref-tiny", device="cpu"), tmp_path / "tiny")
        _cli(env, "models", "register", str(model_dir), "-p", str(ppath))
        req = {"id": "sched-1", "requester": "dpo@example.com", "model": "clip-ref", "dataset": "digits",
               "classes": ["seven"], "method": "projection", "reason": "scheduled test"}
        (tmp_path / "req.json").write_text(json.dumps(req))
        _cli(env, "submit", str(tmp_path / "req.json"), "-p", str(ppath))
        assert json.loads(_cli(env, "status", "sched-1", "--json", "-p", str(ppath)).stdout)[0]["state"] == "pending"
        out = _cli(env, "serve", "-p", str(ppath), "--cron", "* * * * *").stdout
        assert "cron '* * * * *'" in out
        deadline, state = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            state = json.loads(_cli(env, "status", "sched-1", "--json", "-p", str(ppath)).stdout)[0]
            if state["state"] in ("done", "failed"):
                break
            time.sleep(5)
        assert state and state["state"] == "done", (state, (tmp_path / "stack" / "logs" / "worker.log").read_text()[-3000:])
        assert state["last"]["version"] == "2" and state["last"]["certificate"].startswith("s3://")
        listing = _cli(env, "models", "list", "-p", str(ppath)).stdout
        assert "champion" in listing.splitlines()[-1] and "sched-1" in listing
    finally:
        stop(stop_stack)
