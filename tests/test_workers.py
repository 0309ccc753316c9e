"""The in-process mode (`unlearn process` where no Prefect server runs): several workers on one queue,
and a worker killed mid-job; every request is processed exactly once, and a worker that finds a
model busy takes another model instead of waiting. Real S3 and MLflow (the `stack` fixture); each
worker is its own process with its own temporary Prefect server. Slow (a few minutes). The same on
Prefect workers, one flow run per request: tests/test_dispatch_workers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import LENIENT
from servers import spawn, stop

from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline.registration import register_base
from clip_unlearn.pipeline.request_store import ErasureRequest, RequestStore

REPO = Path(__file__).resolve().parents[1]


def _params(tiny_params, stack, tmp_path, **erase):
    p = tiny_params.model_copy(update={
        "storage": tiny_params.storage.model_copy(update={"bucket": stack["bucket"],
                                                          "prefix": f"w/{uuid.uuid4().hex[:8]}"}),
        "gate": tiny_params.gate.model_copy(update=LENIENT),
        "assurance": tiny_params.assurance.model_copy(update={"enabled": False}),
        "erase": tiny_params.erase.model_copy(update={"workdir": str(tmp_path / "runs"), **erase}),
    })
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(json.loads(p.model_dump_json())))
    return p, str(path)


def _worker(params_path: str, home: Path) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL="")
    env.pop("PREFECT_API_URL")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "out.log", "wb") as log:
        return spawn([sys.executable, "-m", "flows.process", params_path], cwd=REPO, env=env, stdout=log,
                     stderr=subprocess.STDOUT)


def _req(model: str, i: int) -> ErasureRequest:
    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return ErasureRequest(id=f"load-{i:03d}", requester="load-test", model=model, dataset="digits",
                          classes=[classes[i % 10]], method="projection", reason="load test")


@pytest.mark.slow
def test_fifty_requests_two_workers_none_lost_none_doubled(tiny_params, stack, tiny_model_dir, tmp_path):
    p, path = _params(tiny_params, stack, tmp_path, lease_seconds=300)
    models = [f"load-a-{uuid.uuid4().hex[:4]}", f"load-b-{uuid.uuid4().hex[:4]}"]
    for m in models:
        register_base(p, tiny_model_dir, m, log=lambda s: None)
    store = RequestStore(p.storage)
    for i in range(50):
        assert store.submit(_req(models[i % 2], i)) == "created"
    t0 = time.monotonic()
    workers = [_worker(path, tmp_path / f"w{k}") for k in range(2)]
    try:
        for w in workers:
            assert w.wait(timeout=1500) == 0, (tmp_path / "w0" / "out.log").read_text()[-3000:]
    finally:
        for w in workers:
            stop(w)   # and whatever a worker left in its process group
    seconds = time.monotonic() - t0
    states = {rid: store.state(rid) for rid in store.ids()}
    assert Counter(s["state"] for s in states.values()) == Counter({"done": 50})
    c = reg.client(p.registry)
    by = Counter()
    for m in models:
        found = [v for v in reg.versions(c, m) if v.tags.get("request_id")]
        ids = [v.tags["request_id"] for v in found]
        assert len(ids) == 25 and len(set(ids)) == 25
        # champion moved one request at a time, each from the version before it: nothing clobbered
        moves = [r for r in reg.audit_log(p.storage, m) if r["alias"] == "champion"][1:]
        assert [(int(r["from"]), int(r["to"])) for r in moves] == [(v, v + 1) for v in range(1, 26)]
    for s in states.values():
        by[s["last"]["by"].split(":")[1]] += 1
    assert len(by) == 2, by   # both workers did work
    print(f"\n50 requests, 2 workers, 2 models: {seconds:.0f} s; per worker {dict(by)}")


@pytest.mark.slow
def test_worker_killed_mid_job_the_request_completes_exactly_once(tiny_params, stack, tiny_model_dir, tmp_path):
    p, path = _params(tiny_params, stack, tmp_path, lease_seconds=8)
    model = f"kill-{uuid.uuid4().hex[:4]}"
    register_base(p, tiny_model_dir, model, log=lambda s: None)
    store = RequestStore(p.storage)
    store.submit(_req(model, 7))
    w = _worker(path, tmp_path / "victim")
    deadline = time.monotonic() + 120
    while store.state("load-007")["state"] != "running":
        assert time.monotonic() < deadline and w.poll() is None
        time.sleep(0.2)
    stop(w, signal.SIGKILL)   # the whole process group, at once
    assert store.state("load-007")["state"] == "running"     # stuck with a lease that will expire
    time.sleep(9)
    w2 = _worker(path, tmp_path / "rescuer")
    try:
        assert w2.wait(timeout=300) == 0, (tmp_path / "rescuer" / "out.log").read_text()[-3000:]
    finally:
        stop(w2)
    st = store.state("load-007")
    assert st["state"] == "done" and st["attempts"] == 2
    assert len(reg.find(reg.client(p.registry), model, request_id="load-007")) == 1
