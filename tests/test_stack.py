"""The local stack as users run it (infra/stack.sh: S3, MLflow, Prefect server, work pool and
worker), on free ports in a temporary folder, driven through the `unlearn` CLI: a request queued
before anything was deployed is started by the cron sweeper; once deployed, `unlearn submit` starts
a request's flow run itself, in seconds, with its artifacts (a table, a link to the certificate that
opens in a browser). Slow (~4 min)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import LENIENT
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


def _wait_final(env: dict, ppath: Path, rid: str, tmp_path: Path, timeout: float = 300) -> dict:
    deadline, state = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        state = json.loads(_cli(env, "status", rid, "--json", "-p", str(ppath)).stdout)[0]
        if state["state"] in ("done", "failed"):
            break
        time.sleep(10)   # each `unlearn status` is a process importing torch: seconds of CPU the job needs
    return state


def _api(env: dict, path: str, body: dict) -> list:
    r = urllib.request.Request(env["PREFECT_API_URL"] + path, data=json.dumps(body).encode(),
                               headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        return json.loads(resp.read())


def _flow_run(env: dict, name: str) -> dict:
    (fr,) = _api(env, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    return fr


def _mlflow(env: dict, path: str) -> dict:
    with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + path, timeout=30) as resp:
        return json.loads(resp.read())


def _artifacts(env: dict, keys: list[str]) -> dict:
    return {a["key"]: a for a in _api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": keys}}})}


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
        params["gate"].update(LENIENT)
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
        assert "sched-1: queued, not started now (no deployment erase-request/erase-cpu" in \
            _cli(env, "submit", str(tmp_path / "req.json"), "-p", str(ppath)).stdout
        assert json.loads(_cli(env, "status", "sched-1", "--json", "-p", str(ppath)).stdout)[0]["state"] == "pending"
        out = _cli(env, "serve", "-p", str(ppath), "--cron", "* * * * *").stdout
        assert "cron '* * * * *'" in out and "deployment erase-request/erase-cpu" in out
        state = _wait_final(env, ppath, "sched-1", tmp_path)
        assert state["state"] == "done", (state, (tmp_path / "stack" / "logs" / "worker.log").read_text()[-3000:])
        assert state["last"]["version"] == "2" and state["last"]["certificate"].startswith("s3://")
        listing = _cli(env, "models", "list", "-p", str(ppath)).stdout
        assert "champion" in listing.splitlines()[-1] and "sched-1" in listing
        # no cron tick now: what starts the next request is `unlearn submit` itself
        _cli(env, "serve", "-p", str(ppath), "--cron", "0 0 1 1 *")
        (tmp_path / "req2.json").write_text(json.dumps(req | {"id": "sched-2", "classes": ["three"]}))
        t0 = time.monotonic()
        out = _cli(env, "submit", str(tmp_path / "req2.json"), "-p", str(ppath)).stdout
        # the state submit saw: a worker polling at that moment may already have taken the run
        assert re.search(r"sched-2: flow run erase-sched-2 \((Scheduled|Pending|Submitting|Running)\) "
                         r"on erase-request/erase-cpu-clip-ref", out), out
        submitted = time.monotonic() - t0
        pending = finished = None
        while time.monotonic() - t0 < 300:   # the flow run's state from the API (cheap), every second
            fr = _flow_run(env, "erase-sched-2")
            if pending is None and fr["state_type"] in ("PENDING", "RUNNING", "COMPLETED"):
                pending = time.monotonic() - t0
            if fr["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                finished = time.monotonic() - t0
                break
            time.sleep(1)
        st = json.loads(_cli(env, "status", "sched-2", "--json", "-p", str(ppath)).stdout)[0]
        assert st["state"] == "done" and st["last"]["version"] == "3", (st, fr["state_type"])
        assert pending is not None and pending < 30, pending      # the worker took it within seconds
        print(f"\nsubmit took {submitted:.1f} s; its flow run was picked up {pending:.1f} s and finished "
              f"{finished:.1f} s after submit started")
        arts = _artifacts(env, ["erasure-sched-2", "erasure-sched-2-certificate"])
        table, link = arts["erasure-sched-2"], arts["erasure-sched-2-certificate"]
        assert table["type"] == "table" and link["type"] == "markdown"   # Prefect 3.8 stores a link as markdown
        rows = json.loads(table["data"])
        assert {"forget", "retain"} <= {r["name"] for r in rows if r["kind"] == "metric"}
        assert {r["name"] for r in rows if r["kind"] == "check"} and all(r["held"] for r in rows if r["kind"] == "check")
        page = link["data"].split("](", 1)[1].rstrip(")")   # the MLflow UI's page of the run's certificate.html
        assert page.startswith(env["MLFLOW_TRACKING_URI"] + "/#/experiments/") and \
            page.endswith("/artifacts/certificate/certificate.html"), page
        exp, run = page.split("/#/experiments/", 1)[1].split("/")[0:3:2]
        mlflow_run = _mlflow(env, f"/api/2.0/mlflow/runs/get?run_id={run}")["run"]["info"]
        assert mlflow_run["experiment_id"] == exp                          # the page's experiment and run exist
        url = f"{env['MLFLOW_TRACKING_URI']}/get-artifact?path=certificate%2Fcertificate.html&run_uuid={run}"
        assert url in link["description"]
        with urllib.request.urlopen(url, timeout=30) as r:   # the file the page shows
            assert "text/html" in r.headers.get("content-type", "") and b"sched-2" in r.read()
    finally:
        stop(stop_stack)
