"""Dispatch without workers, on real servers (S3, MLflow, the Prefect test harness's server): a claim
kept alive by its heartbeat, `unlearn submit` starting one flow run per request however often and
by however many it is submitted, a crashed run replaced under the next attempt's key, a Prefect
server that is down leaving the request queued, and the in-process mode skipping a busy model
instead of waiting for it. The runs themselves (workers) are in tests/test_dispatch_workers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import LENIENT

from clip_unlearn.pipeline.dispatch import attempt_key
from clip_unlearn.pipeline.eventlog import EventLog, LeaseLost
from clip_unlearn.pipeline.heartbeat import Heartbeat
from clip_unlearn.pipeline.registration import register_base
from clip_unlearn.pipeline.request_store import ErasureRequest, RequestStore
from clip_unlearn.pipeline.storage import safe_key

REPO = Path(__file__).resolve().parents[1]
UNLEARN = str(Path(sys.executable).parent / "unlearn")


def write_params(tiny_params, stack, tmp_path, **erase):
    """Params on the test stack with a fresh prefix and a fresh base deployment name."""
    tag = uuid.uuid4().hex[:8]
    sched = tiny_params.erase.schedule.model_copy(update={"erase_deployment": f"erase-{tag}"})
    p = tiny_params.model_copy(update={
        "storage": tiny_params.storage.model_copy(update={"bucket": stack["bucket"], "prefix": f"d/{tag}"}),
        "gate": tiny_params.gate.model_copy(update=LENIENT),
        "assurance": tiny_params.assurance.model_copy(update={"enabled": False}),
        "erase": tiny_params.erase.model_copy(update={"workdir": str(tmp_path / "runs"), "schedule": sched, **erase}),
    })
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(json.loads(p.model_dump_json())))
    return p, str(path)


def req(rid: str, model: str, cls: str = "seven") -> ErasureRequest:
    return ErasureRequest(id=rid, requester="dpo@example.com", model=model, dataset="digits", classes=[cls],
                          method="projection", reason="dispatch test")


def runs_named(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def test_a_claim_renewed_by_its_heartbeat_outlives_its_ttl_and_a_lost_one_says_so(tiny_params, stack, tmp_path):
    p, _ = write_params(tiny_params, stack, tmp_path)
    store = RequestStore(p.storage)
    store.submit(req("hb", "m"))
    claim = store.claim("hb", ttl=1.5, max_attempts=3)
    with Heartbeat(0.5, claim.renew, log=lambda s: None) as beat:
        for _ in range(8):                                # 4 s: well past the 1.5 s TTL
            time.sleep(0.5)
            assert not store.claimable(store.state("hb"))  # nobody else could take it
    assert beat.beats >= 4 and beat.lost is None
    # renew and finish from two threads: every event lands after the one before, none is lost
    t = threading.Thread(target=lambda: [claim.renew() for _ in range(5)])
    t.start()
    assert claim.finish("done", version="2", certificate="s3://x", promoted=True)
    t.join()
    events = EventLog(p.storage, safe_key("requests", "hb", "events"), store.client).events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) and events[-1]["state"] == "done"
    assert [e["state"] for e in events].count("running") == len(events) - 2   # pending, then running..., done
    # a claim that expired (no heartbeat) is taken over; the old holder's renewal then fails, loudly
    store.submit(req("hb2", "m"))
    old = store.claim("hb2", ttl=0.5, max_attempts=3)
    time.sleep(0.7)
    new = store.claim("hb2", ttl=30, max_attempts=3)
    assert new is not None and new.attempt == 2
    with pytest.raises(LeaseLost):
        old.renew()
    with Heartbeat(0.2, old.renew, new.renew, log=lambda s: None) as beat:
        time.sleep(0.7)
    assert isinstance(beat.lost, LeaseLost)
    assert not old.finish("done", version="9", certificate="x", promoted=False)   # the new holder's now
    assert store.state("hb2")["state"] == "running" and store.state("hb2")["last"]["attempt"] == 2


@pytest.fixture
def deployed(tiny_params, stack, tiny_model_dir, tmp_path, prefect_harness):
    """A registered model and the base erase-request deployment on a process pool no worker polls."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.deploy import deploy_erase

    p, path = write_params(tiny_params, stack, tmp_path)
    model = f"disp-{uuid.uuid4().hex[:6]}"
    register_base(p, tiny_model_dir, model, log=lambda s: None)
    pool = f"idle-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deploy_erase(path, pool, p.erase.schedule.erase_deployment)
    yield {"params": p, "path": path, "model": model, "pool": pool}
    with get_client(sync_client=True) as c:   # leave nothing another test's sweeper could find
        for d in c.read_deployments():
            if d.work_pool_name == pool:
                c.delete_deployment(d.id)


def test_submit_starts_one_flow_run_however_often_and_by_however_many(deployed, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.settings import get_current_settings
    from prefect.states import Crashed
    from typer.testing import CliRunner

    from clip_unlearn.cli import app
    from flows.dispatch import sweep

    p, path, model = deployed["params"], deployed["path"], deployed["model"]
    store = RequestStore(p.storage)
    f = tmp_path / "one.json"
    f.write_text(json.dumps(req("one", model).model_dump()))
    base = p.erase.schedule.erase_deployment
    for _ in range(2):                           # a resubmit: same run
        res = CliRunner().invoke(app, ["submit", str(f), "-p", path])
        assert res.exit_code == 0, res.output
        assert f"one: flow run erase-one (Scheduled) on erase-request/{base}-{model}" in res.output, res.output
    (run,) = runs_named("erase-one")
    assert run.idempotency_key == attempt_key("one", 1) == "erase-one-a1" and run.parameters["request_id"] == "one"
    with get_client(sync_client=True) as c:
        d = c.read_deployment_by_name(f"erase-request/{base}-{model}")
        assert d.global_concurrency_limit.limit == 1
        assert d.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
        assert d.entrypoint == "flows/erase.py:erase_request" and d.parameters["params_path"] == path
        # its own queue, limit 1: a worker is not handed this model's second run while the first runs
        assert d.work_pool_name == deployed["pool"] and d.work_queue_name == f"{base}-{model}"
        assert c.read_work_queue_by_name(d.work_queue_name, work_pool_name=deployed["pool"]).concurrency_limit == 1
    # two submitters at the same moment, each its own process: one run
    g = tmp_path / "two.json"
    g.write_text(json.dumps(req("two", model, "three").model_dump()))
    env = dict(os.environ, PREFECT_API_URL=get_current_settings().api.url)
    procs = [subprocess.Popen([UNLEARN, "submit", str(g), "-p", path], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [pr.communicate(timeout=300)[0] for pr in procs]
    assert [pr.returncode for pr in procs] == [0, 0], outs
    assert all("two: flow run erase-two (Scheduled)" in o for o in outs), outs
    assert len(runs_named("erase-two")) == 1
    # the sweeper finds both started: nothing new
    assert {i["flow_run"]["id"] for i in sweep(p, store, log=lambda s: None)} == \
        {str(run.id), str(runs_named("erase-two")[0].id)}
    assert len(runs_named("erase-one")) == 1 and len(runs_named("erase-two")) == 1
    # a run that crashed before it claimed the request: the same key gives it back, so the next key starts a new one
    with get_client(sync_client=True) as c:
        c.set_flow_run_state(run.id, Crashed(message="test"), force=True)
    (again,) = [i for i in sweep(p, store, log=lambda s: None) if i["id"] == "one"]
    assert again["key"] == "erase-one-a2" and again["flow_run"]["id"] != str(run.id)
    assert sorted(r.idempotency_key for r in runs_named("erase-one")) == ["erase-one-a1", "erase-one-a2"]
    assert store.state("one")["state"] == "pending"   # the S3 log is the record; nothing ran


def test_a_run_lost_with_its_worker_is_marked_crashed_and_the_next_attempt_starts(deployed):
    """A worker gone with its run leaves it Running in Prefect, where it would hold its model's
    queue (limit 1) for good; once the request's S3 claim has expired, the sweeper marks it Crashed
    and starts the next attempt. A run made after the claim expired is not touched."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.dispatch import dispatch_request, sweep

    p, model = deployed["params"], deployed["model"]
    store = RequestStore(p.storage)
    store.submit(req("lost", model))
    first = dispatch_request(p, "lost", store, log=lambda s: None)["flow_run"]
    with get_client(sync_client=True) as c:   # what a worker did before it vanished: Running, claimed
        c.set_flow_run_state(first["id"], Running(), force=True)
    assert store.claim("lost", ttl=1, max_attempts=3) is not None
    assert "lost" not in [i["id"] for i in sweep(p, store, log=lambda s: None)]   # a live claim: left alone
    time.sleep(1.5)
    logs = []
    (info,) = [i for i in sweep(p, store, log=logs.append) if i["id"] == "lost"]
    assert info["key"] == "erase-lost-a2" and info["flow_run"]["id"] != first["id"], info
    assert any("erase-lost marked Crashed" in s for s in logs), logs
    with get_client(sync_client=True) as c:
        old = c.read_flow_run(first["id"])
        assert old.state.name == "Crashed" and "claim on request lost expired" in old.state.message
        new = info["flow_run"]["id"]
        c.set_flow_run_state(new, Running(), force=True)   # the new attempt, taken by a worker, not claimed yet
    again = [i for i in sweep(p, store, log=lambda s: None) if i["id"] == "lost"]
    assert again and again[0]["flow_run"]["id"] == new
    with get_client(sync_client=True) as c:
        assert c.read_flow_run(new).state.name == "Running"


def test_submit_with_prefect_down_queues_the_request_and_says_so(deployed, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from servers import free_port
    from typer.testing import CliRunner

    from clip_unlearn.cli import app

    f = tmp_path / "down.json"
    f.write_text(json.dumps(req("down", deployed["model"]).model_dump()))
    t0 = time.monotonic()
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        res = CliRunner().invoke(app, ["submit", str(f), "-p", deployed["path"]])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0] == "down: submitted" and len(lines) == 2, res.output
    assert lines[1].startswith("down: queued, not started now (the Prefect server did not answer") and \
        lines[1].endswith("the sweeper (process-requests) starts it"), res.output
    assert time.monotonic() - t0 < 60
    assert RequestStore(deployed["params"].storage).state("down")["state"] == "pending"
    assert runs_named("erase-down") == []


def test_in_process_mode_skips_a_model_another_worker_holds_and_never_waits(tiny_params, stack, tiny_model_dir,
                                                                          tmp_path, prefect_harness):
    from flows.process import process_requests

    p, path = write_params(tiny_params, stack, tmp_path, lease_seconds=600)
    busy, free = f"busy-{uuid.uuid4().hex[:6]}", f"free-{uuid.uuid4().hex[:6]}"
    for m in (busy, free):
        register_base(p, tiny_model_dir, m, log=lambda s: None)
    store = RequestStore(p.storage)
    store.submit(req("a", busy))
    store.submit(req("b", free))
    lease = EventLog(p.storage, safe_key("locks", "models", busy), store.client)
    assert lease.append(0, {"state": "held", "until": time.time() + 600, "by": "elsewhere:1:abc"})
    t0 = time.monotonic()
    out = process_requests(params_path=path)   # auto: no base deployment for these params -> here
    assert [(r["id"], r["state"]) for r in out] == [("b", "done")]
    assert time.monotonic() - t0 < 300         # it did b, and did not sit out the 600 s lease on a
    assert store.state("a")["state"] == "pending"
    # b's erase run left its table (before/after, every check) and the link to its certificate's page
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        arts = {a.key: a for a in c.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["erasure-b", "erasure-b-certificate"])))}
    rows = arts["erasure-b"].data if isinstance(arts["erasure-b"].data, list) else json.loads(arts["erasure-b"].data)
    assert arts["erasure-b"].type == "table" and {"forget", "retain"} <= {r["name"] for r in rows if r["kind"] == "metric"}
    assert all(set(r) == {"kind", "name", "before", "after", "value", "limit", "held"} for r in rows)
    assert all(r["held"] in ("yes", "NO") and r["limit"] for r in rows if r["kind"] == "check")
    link = arts["erasure-b-certificate"]
    assert link.type == "markdown" and "/#/experiments/" in link.data and "/artifacts/certificate/certificate.html)" in link.data
    lease.append(1, {"state": "released", "by": "elsewhere:1:abc"})
    assert [(r["id"], r["state"]) for r in process_requests(params_path=path, mode="here")] == [("a", "done")]
