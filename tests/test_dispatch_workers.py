"""One flow run per request on real Prefect process workers (a real `prefect server start`, S3 and
MLflow): two workers and two models progress at the same time with every request done once; a job
that runs longer than its claim's TTL is done once while the sweeper keeps sweeping; a flow run
killed mid-job is replaced under the next attempt's key; and prefect.yaml deploys, with a worker in
another folder running the code of a git clone. Slow (minutes)."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from servers import drain_prefect_clients, start_prefect, start_worker, stop, stop_worker
from test_dispatch import req, runs_named, write_params

from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline.eventlog import EventLog
from clip_unlearn.pipeline.registration import register_base
from clip_unlearn.pipeline.request_store import RequestStore
from clip_unlearn.pipeline.storage import safe_key

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(stack, tmp_path_factory):
    """A Prefect server of its own; this process's Prefect client talks to it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    proc, url = start_prefect(tmp_path_factory.mktemp("prefect"),
                              PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url   # threads and subprocesses
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
            drain_prefect_clients()   # while this server is up: later tests get clients of their own
    finally:
        os.environ.pop("PREFECT_API_URL") if saved is None else os.environ.update(PREFECT_API_URL=saved)
        stop(proc)


@pytest.fixture(scope="module")
def two_workers(server, tmp_path_factory):
    """A process pool and two workers on it, each running one flow run at a time with one thread."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool, root = f"pool-{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("workers")
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    workers = [start_worker(server, pool, f"w{i}", root / f"w{i}", limit=1, OMP_NUM_THREADS="1") for i in range(2)]
    try:
        yield {"pool": pool, "workers": workers}
    finally:
        for w in workers:
            stop_worker(w)


def deployed(tiny_params, stack, tmp_path, pool, models=(), tiny_model_dir=None, **erase):
    from flows.deploy import deploy_erase

    p, path = write_params(tiny_params, stack, tmp_path, **erase)
    for m in models:
        register_base(p, tiny_model_dir, m, log=lambda s: None)
    deploy_erase(path, pool, p.erase.schedule.erase_deployment)
    return p, path


def events(p, rid: str) -> list[dict]:
    return EventLog(p.storage, safe_key("requests", rid, "events")).events()


def wait_final(store: RequestStore, ids, timeout: float, during=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        states = {rid: store.state(rid) for rid in ids}
        if all(s["state"] in ("done", "failed") for s in states.values()):
            return states
        assert time.monotonic() < deadline, {r: s["state"] for r, s in states.items()}
        if during:
            during()
        time.sleep(1)


def taken(flow_run_id) -> float:
    """When a worker took the flow run: its first Pending state (epoch seconds)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        return min(st.timestamp.timestamp() for st in c.read_flow_run_states(flow_run_id) if st.type.value == "PENDING")


def interval(evs: list[dict], ttl: float) -> tuple[float, float]:
    """[claimed, finished] of a request's one attempt, from its S3 log (epoch seconds)."""
    claimed = next(e for e in evs if e.get("step") == "claimed")["until"] - ttl
    finished = datetime.fromisoformat(evs[-1]["at"]).timestamp()
    return claimed, finished + 1   # `at` has whole seconds


def test_two_workers_two_models_at_once_each_request_once(tiny_params, stack, tiny_model_dir, tmp_path, two_workers):
    from flows.dispatch import dispatch_request

    models = [f"ma-{uuid.uuid4().hex[:4]}", f"mb-{uuid.uuid4().hex[:4]}"]
    p, _ = deployed(tiny_params, stack, tmp_path, two_workers["pool"], models, tiny_model_dir, lease_seconds=60)
    store = RequestStore(p.storage)
    ids = [f"two-{i}" for i in range(10)]
    for i, rid in enumerate(ids):        # a's first, then b's: b must not wait for a's backlog
        store.submit(req(rid, models[i // 5], CLASSES[i % 5]))
    t0 = time.monotonic()
    started = {}

    def submitter(k):                    # two submitters, every request, at the same time
        for rid in ids:                  # None: a worker already runs it under its claim
            info = dispatch_request(p, rid, store, log=lambda s: None)
            started[(k, rid)] = info and info["flow_run"]["id"]

    # each thread in a copy of this context: Prefect's settings (the API URL) live in a context variable
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(submitter, k)) for k in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    run_of = {}
    for rid in ids:                      # both submitters got the one run (or found it running)
        (run_of[rid],) = {started[(k, rid)] for k in range(2)} - {None}
    states = wait_final(store, ids, 1200)
    seconds = time.monotonic() - t0
    assert Counter(s["state"] for s in states.values()) == Counter({"done": 10}), states
    spans, running = {}, {}
    for rid in ids:
        evs = events(p, rid)
        assert [e["state"] for e in evs if e["state"] != "running"] == ["pending", "done"], evs
        assert [e.get("step") for e in evs].count("claimed") == 1 and states[rid]["attempts"] == 1
        (run,) = runs_named(f"erase-{rid}")
        assert run.state.is_completed() and str(run.id) == run_of[rid]
        spans[rid] = interval(evs, 60)
        running[rid] = (taken(run.id), run.end_time.timestamp())
    a, b = ([spans[r] for r in ids[:5]], [spans[r] for r in ids[5:]])
    for model_spans in (a, b):   # one model: one at a time (its queue's and deployment's limits)
        ordered = sorted(model_spans)
        assert all(x[1] - 1 <= y[0] + 1e-3 for x, y in zip(ordered, ordered[1:])), ordered
    # both models progressed at the same time: their flow runs were in a worker's hands (Pending, when
    # a worker took it, to its end) together for at least half of the shorter model's total (a worker
    # turned away by a busy model's queued runs, one poll each, leaves the models mostly taking turns)
    ra, rb = [running[r] for r in ids[:5]], [running[r] for r in ids[5:]]
    overlap = sum(max(0.0, min(x[1], y[1]) - max(x[0], y[0])) for x in ra for y in rb)
    shorter = min(sum(e - s for s, e in ra), sum(e - s for s, e in rb))
    assert overlap >= shorter / 2, (ra, rb)
    assert min(s[0] for s in b) - t0 < min(s[0] for s in a) - t0 + 60   # b did not wait for a's backlog
    by_worker, turned_away = Counter(), []
    for w in two_workers["workers"]:
        log = w.log.read_text(errors="replace")
        by_worker[w.log.stem] = sum(f"Flow run 'erase-{rid}' submitted to infrastructure" in log for rid in ids)
        # the server never handed a worker a run of a model that had one running: no run was sent
        # back to wait (Scheduled, AwaitingConcurrencySlot) after a worker had taken it
        turned_away += [line for line in log.splitlines() if "Aborted submission" in line
                        and "non-pending state 'SCHEDULED'" in line and any(i in line for i in run_of.values())]
    assert sorted(by_worker.values())[0] >= 1 and sum(by_worker.values()) == 10, by_worker
    assert not turned_away, turned_away
    c = reg.client(p.registry)
    for m, mine in zip(models, (ids[:5], ids[5:])):
        assert sorted(v.tags["request_id"] for v in reg.versions(c, m) if v.tags.get("request_id")) == sorted(mine)
    print(f"\n10 requests, 2 models, 2 workers (1 thread each): {seconds:.0f} s, models running together "
          f"{overlap:.0f} s of {shorter:.0f} s, "
          f"runs per worker {dict(by_worker)}, turned away {len(turned_away)}")


def test_a_job_longer_than_its_claim_ttl_is_done_once(tiny_params, stack, tiny_model_dir, tmp_path, two_workers):
    from flows.dispatch import sweep
    from flows.process import process_requests

    ttl, model = 5.0, f"long-{uuid.uuid4().hex[:4]}"
    p, path = deployed(tiny_params, stack, tmp_path, two_workers["pool"], [model], tiny_model_dir, lease_seconds=ttl)
    # the job must outlive its TTL several times on a fast machine too: 40 relearning steps took 25 s
    # here but 14.9 s on CI, under the 3 * TTL asserted below
    slow = p.assurance.model_copy(update={"enabled": True, "relearn_steps": 240, "relearn_batch_size": 16,
                                          "relearn_eval_every": 5, "probe_max_iter": 50})
    p = p.model_copy(update={"assurance": slow})
    Path(path).write_text(yaml.safe_dump(json.loads(p.model_dump_json())))
    store = RequestStore(p.storage)
    store.submit(req("long", model))
    swept = []
    sweep(p, store, log=lambda s: None)
    here = {}

    def sweep_meanwhile():
        if store.state("long")["state"] == "running":
            swept.append(sweep(p, store, log=lambda s: None))
            if not here:   # and once the in-process mode on this machine
                here["out"] = process_requests(params_path=path, mode="here")

    st = wait_final(store, ["long"], 900, during=sweep_meanwhile)["long"]
    evs = events(p, "long")
    claimed, finished = interval(evs, ttl)
    assert st["state"] == "done" and st["attempts"] == 1
    assert [e.get("step") for e in evs].count("claimed") == 1 and [e["state"] for e in evs].count("done") == 1
    assert finished - claimed > 3 * ttl, (claimed, finished)   # it outlived its TTL several times over
    renewals = [e for e in evs if e.get("step") == "renewed"]
    assert len(renewals) >= 3 and len({e["by"] for e in renewals}) == 1
    assert len(swept) >= 3 and all(s == [] for s in swept) and here["out"] == []   # nobody took it over
    assert len(runs_named("erase-long")) == 1
    assert len(reg.find(reg.client(p.registry), model, request_id="long")) == 1
    print(f"\njob ran {finished - claimed:.0f} s with a {ttl:.0f} s claim TTL: {len(renewals)} renewals, "
          f"{len(swept)} sweeps meanwhile")


def test_a_killed_flow_run_is_retried_under_the_next_key_and_done_once(tiny_params, stack, tiny_model_dir, tmp_path,
                                                                     two_workers):
    from flows.dispatch import dispatch_request, sweep

    model = f"kill-{uuid.uuid4().hex[:4]}"
    p, _ = deployed(tiny_params, stack, tmp_path, two_workers["pool"], [model], tiny_model_dir, lease_seconds=6)
    store = RequestStore(p.storage)
    store.submit(req("victim", model))
    dispatch_request(p, "victim", store)
    deadline = time.monotonic() + 300
    while store.state("victim")["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    pid = int(store.state("victim")["last"]["by"].split(":")[1])
    os.kill(pid, signal.SIGKILL)         # the flow run's process dies mid-job
    st = wait_final(store, ["victim"], 600, during=lambda: sweep(p, store, log=lambda s: None))["victim"]
    assert st["state"] == "done" and st["attempts"] == 2
    runs = sorted(runs_named("erase-victim"), key=lambda r: r.idempotency_key)
    assert [r.idempotency_key for r in runs] == ["erase-victim-a1", "erase-victim-a2"]
    assert runs[0].state.name == "Crashed" and runs[1].state.is_completed()
    assert len(reg.find(reg.client(p.registry), model, request_id="victim")) == 1


def test_prefect_yaml_deploys_and_a_worker_elsewhere_runs_the_git_clone(tiny_params, stack, tiny_model_dir, tmp_path,
                                                                       server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import LogFilter
    from prefect.deployments import run_deployment

    bare = tmp_path / "clip-unlearn.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "push", "-q", str(bare), "HEAD:refs/heads/under-test"], cwd=REPO, check=True)
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name="cpu-process", type="process"))
        c.create_work_pool(WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=json.loads(
            (REPO / "infra/k8s/base-job-template-gpu.json").read_text())))
    env = dict(os.environ, CLIP_UNLEARN_GIT_URL=f"file://{bare}", CLIP_UNLEARN_GIT_BRANCH="under-test",
               CLIP_UNLEARN_IMAGE="registry.example.com/clip-unlearn/worker:test", PREFECT_CLI_PROMPT="false")
    res = subprocess.run([str(Path(sys.executable).parent / "prefect"), "deploy", "--all", "--no-prompt"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with get_client(sync_client=True) as c:
        cpu = c.read_deployment_by_name("erase-request/erase-cpu")
        gpu = c.read_deployment_by_name("erase-request/erase-gpu")
        sweeper = c.read_deployment_by_name("process-requests/process-requests")
    clone = cpu.pull_steps[0]["prefect.deployments.steps.git_clone"]
    assert (clone["repository"], clone["branch"]) == (f"file://{bare}", "under-test")
    assert gpu.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    assert gpu.job_variables["image"] == "registry.example.com/clip-unlearn/worker:test"
    assert sweeper.parameters["mode"] == "dispatch" and sweeper.schedules[0].schedule.cron == "*/10 * * * *"
    # a worker started in an empty folder runs erase-cpu from the clone
    p, path = write_params(tiny_params, stack, tmp_path)
    model = f"git-{uuid.uuid4().hex[:4]}"
    register_base(p, tiny_model_dir, model, log=lambda s: None)
    RequestStore(p.storage).submit(req("cloned", model))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    w = start_worker(server, "cpu-process", "remote", tmp_path / "remote", cwd=elsewhere)
    try:
        fr = run_deployment(name="erase-request/erase-cpu", parameters={"request_id": "cloned", "params_path": path},
                            flow_run_name="erase-cloned", timeout=600, poll_interval=2, as_subflow=False)
    finally:
        stop_worker(w)
    with get_client(sync_client=True) as c:
        logs = [lg.message for lg in c.read_logs(log_filter=LogFilter(flow_run_id={"any_": [fr.id]}))]
    assert fr.state.is_completed(), (fr.state, logs[-20:], w.log.read_text()[-3000:])
    (where,) = [m for m in logs if m.startswith("request cloned: clip_unlearn from ")]
    assert "/clip-unlearn/src/clip_unlearn" in where and str(REPO) not in where, where
    assert RequestStore(p.storage).state("cloned")["state"] == "done"
