"""The erasure pipeline against real components: S3 (SeaweedFS), an MLflow tracking server and
Prefect (test harness). Tiny data and a tiny random model keep each run to seconds."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import LENIENT

from clip_unlearn.core.models import WEIGHTS_FILE, load_model, save_model
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import steps, storage
from clip_unlearn.pipeline.certificate import verify_certificate
from clip_unlearn.pipeline.eventlog import Lease
from clip_unlearn.pipeline.job import lineage_of
from clip_unlearn.pipeline.registration import register_base
from clip_unlearn.pipeline.request_store import ErasureRequest, RequestStore, parse_request

STRICT = {"forget_max": 0.0, "forget_drop_min": 0.99}


@pytest.fixture
def env(tiny_params, stack, tiny_model_dir, tmp_path):
    """Params pointing at the test stack, a fresh model name and prefix, the base registered."""
    name = f"m-{uuid.uuid4().hex[:8]}"
    p = tiny_params.model_copy(update={
        "storage": tiny_params.storage.model_copy(update={"bucket": stack["bucket"], "prefix": f"t/{name}"}),
        "registry": tiny_params.registry.model_copy(update={"model_name": name, "experiment": "tests"}),
        "gate": tiny_params.gate.model_copy(update=LENIENT),
        "assurance": tiny_params.assurance.model_copy(update={"relearn_steps": 2, "relearn_batch_size": 8,
                                                              "relearn_eval_every": 1, "probe_max_iter": 10}),
        "forget": tiny_params.forget.model_copy(update={"method": "projection"}),
        "erase": tiny_params.erase.model_copy(update={"workdir": str(tmp_path / "runs"), "request_id": "q1",
                                                      "lease_seconds": 60, "schedule": tiny_params.erase.schedule.model_copy(
                                                          update={"erase_deployment": f"erase-{name}"})}),
    })
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(json.loads(p.model_dump_json())))
    base = register_base(p, tiny_model_dir)
    return {"params": p, "path": str(path), "name": name, "base": base, "client": reg.client(p.registry)}


def request(env, rid="r1", **kw) -> ErasureRequest:
    return ErasureRequest(**{"id": rid, "requester": "dpo@example.com", "model": env["name"], "dataset": "digits",
                             "classes": ["seven"], "method": "projection", "reason": "test", **kw})


def test_erase_registers_verifies_promotes_with_evidence(env, prefect_harness, stack):
    from flows.erase import erase

    c, name = env["client"], env["name"]
    assert env["base"]["version"] == "1" and reg.aliases(c, name) == {"champion": "1"}
    out = erase(request=request(env).model_dump(), params_path=env["path"])
    assert (out["verdict"], out["version"], out["promoted"]) == ("passed", "2", True)
    assert reg.aliases(c, name) == {"champion": "2", "candidate": "2"}
    tags = c.get_model_version(name, "2").tags
    assert tags["request_id"] == "r1" and tags["method"] == "projection" and tags["base_version"] == "1"
    assert tags["forgotten"] == "digits:seven" and tags["verdict"] == "passed" and "af.forget_top1" in tags
    assert "digits" in json.loads(tags["data_versions"]) and "git_commit" in json.loads(tags["code_version"])
    # certificate in S3 (integrity-checked) and on the MLflow run
    folder = Path(env["params"].erase.workdir) / "dl"
    storage.download_dir(env["params"].storage, "certificates/r1", folder)
    assert verify_certificate(folder / "certificate.json")
    assert {"certificate.json", "certificate.html", "per_class.png", "relearn.png", "probe.png"} <= \
        {p.name for p in folder.iterdir()}
    cert = json.loads((folder / "certificate.json").read_text())
    assert cert["verdict"] == "passed" and cert["model"]["new_sha256"] == tags["weights_sha256"]
    assert {"passed", "forget_top1_curve"} <= set(cert["assurance"]["relearn"])
    assert {"passed", "base_balanced_accuracy", "new_balanced_accuracy"} <= set(cert["assurance"]["probe"])
    run = c.get_model_version(name, "2").run_id
    assert {a.path for a in c.list_artifacts(run, "certificate")} >= {"certificate/certificate.html"}
    # no credential anywhere a user can read
    blob = json.dumps(tags) + (folder / "certificate.json").read_text() + json.dumps(c.get_run(run).data.params)
    assert stack["secret"] not in blob and stack["key"] not in blob
    moves = [r for r in reg.audit_log(env["params"].storage, name) if r["alias"] == "champion"]
    assert [(m["from"], m["to"]) for m in moves] == [(None, "1"), ("1", "2")] and all(m["who"] for m in moves)
    from typer.testing import CliRunner

    from clip_unlearn.cli import app

    res = CliRunner().invoke(app, ["models", "rollback", "--reason", "audit", "--model", name, "-p", env["path"]])
    assert res.exit_code == 0 and "v2 -> v1 (rollback)" in res.output
    assert reg.aliases(c, name)["champion"] == "1"
    res = CliRunner().invoke(app, ["models", "history", name, "-p", env["path"]])
    assert "champion   v2 -> v1  rollback: audit" in res.output


def test_failed_verification_is_registered_but_never_promoted(env, prefect_harness):
    from flows.erase import erase

    out = erase(request=request(env, "strict", thresholds=STRICT).model_dump(), params_path=env["path"])
    assert (out["verdict"], out["promoted"]) == ("failed", False)
    assert reg.aliases(env["client"], env["name"]) == {"champion": "1", "candidate": out["version"]}
    from typer.testing import CliRunner

    from clip_unlearn.cli import app

    res = CliRunner().invoke(app, ["models", "promote", out["version"], "--reason", "try", "--model", env["name"],
                                   "-p", env["path"]])
    assert res.exit_code == 1 and "not promoting without evidence" in res.output
    assert reg.aliases(env["client"], env["name"])["champion"] == "1"


def test_requests_are_processed_once_and_ids_never_reused(env, prefect_harness):
    from flows.process import process_requests

    store = RequestStore(env["params"].storage)
    assert store.submit(request(env, "a")) == "created"
    assert store.submit(request(env, "a")) == "exists"
    with pytest.raises(ConfigError, match="already used for a different request"):
        store.submit(request(env, "a", classes=["three"]))
    store.submit(request(env, "b", thresholds=STRICT))
    out = {r["id"]: r for r in process_requests(params_path=env["path"])}
    assert out["a"]["state"] == "done" and out["b"]["state"] == "failed" and "forget_drop = " in out["b"]["reason"]
    assert process_requests(params_path=env["path"]) == []   # nothing left, nothing redone
    for rid in ("a", "b"):
        assert len(reg.find(env["client"], env["name"], request_id=rid)) == 1
    assert store.state("a")["last"]["version"] == out["a"]["version"]


def test_crash_between_register_and_promote_resumes_consistently(env, prefect_harness):
    from flows.erase import erase

    p, req = env["params"], request(env, "crash")
    job = steps.Job.create(p, req, log=lambda s: None)
    base = steps.fetch_base(job)
    out = steps.unlearn(job, base["model_dir"], None)
    registered = steps.register(job, base, out, steps.verify(job, base["model_dir"], out["model_dir"], out["result"]))
    assert reg.aliases(env["client"], env["name"])["champion"] == "1"   # "crashed" before promoting
    summary = erase(request=req.model_dump(), params_path=env["path"])
    assert summary["resumed"] and summary["version"] == registered["version"] and summary["promoted"]
    assert len(reg.find(env["client"], env["name"], request_id="crash")) == 1
    assert reg.aliases(env["client"], env["name"])["champion"] == registered["version"]
    with pytest.raises(ConfigError, match="already used for a different erasure"):
        erase(request=request(env, "crash", classes=["three"]).model_dump(), params_path=env["path"])


def test_corrupted_weights_in_s3_are_refused(env, prefect_harness):
    """The version's weights changed in MLflow's artifact store (S3 behind the tracking server)."""
    from flows.process import process_requests

    p = env["params"]
    model_id = reg.model_id(env["client"].get_model_version(env["name"], "1"))
    bucket = p.storage.model_copy(update={"prefix": ""})
    (key,) = [k for k in storage.list_keys(bucket, "mlflow/") if model_id in k and k.endswith(WEIGHTS_FILE)]
    storage.put_bytes(bucket, key, b"not the weights")
    with pytest.raises(reg.IntegrityError, match="sha256"):
        reg.fetch(env["client"].get_model_version(env["name"], "1"), p.storage, Path(p.erase.workdir) / "x")
    store = RequestStore(p.storage)
    store.submit(request(env, "corrupt"))
    (out,) = process_requests(params_path=env["path"])
    assert out["state"] == "failed" and "IntegrityError" in out["reason"]
    assert reg.find(env["client"], env["name"], request_id="corrupt") == []


@pytest.mark.slow
def test_mlflow_down_leaves_the_request_pending_then_it_completes(env, prefect_harness, tmp_path):
    from servers import free_port

    from flows.process import process_requests

    down = env["params"].model_copy(update={"registry": env["params"].registry.model_copy(
        update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})})
    bad = tmp_path / "down.yaml"
    bad.write_text(yaml.safe_dump(json.loads(down.model_dump_json())))
    store = RequestStore(env["params"].storage)
    store.submit(request(env, "later"))
    (out,) = process_requests(params_path=str(bad))
    assert out["state"] == "retry" and store.state("later")["state"] == "retry"
    (out,) = process_requests(params_path=env["path"])
    assert out["state"] == "done" and store.state("later")["attempts"] == 2


def test_bad_requests_say_what_is_wrong(env):
    with pytest.raises(ConfigError, match=r"thresholds: forget_max"):
        parse_request(request(env).model_dump() | {"thresholds": {"forget_max": 1.5}})
    with pytest.raises(ConfigError, match="id"):
        parse_request(request(env).model_dump() | {"id": "../../etc"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_request("{nope")
    with pytest.raises(ConfigError, match="unknown method 'projektion'"):
        parse_request(request(env).model_dump() | {"method": "projektion"})
    with pytest.raises(ConfigError, match="did you mean 'seven'"):
        request(env, classes=["sevn"]).forget_request().check(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"], {})
    with pytest.raises(ConfigError, match="classes"):
        parse_request(request(env).model_dump() | {"classes": []})
    with pytest.raises(ConfigError, match="forgetting every class"):
        request(env, classes=["a", "b"]).forget_request().check(["a", "b"], {})
    with pytest.raises(ConfigError, match="requester"):
        parse_request({k: v for k, v in request(env).model_dump().items() if k != "requester"})
    with pytest.raises(reg.RegistryError, match=r"no version '7' \(aliases: champion->v1; versions: 1\)"):
        reg.resolve(env["client"], env["name"], "7")
    with pytest.raises(reg.RegistryError, match=r"no alias 'gold' \(aliases: champion->v1"):
        reg.resolve(env["client"], env["name"], "gold")
    with pytest.raises(reg.RegistryError, match="no registered model 'nope'"):
        reg.resolve(env["client"], "nope", "champion")


def test_lease_has_exactly_one_holder(env):
    from concurrent.futures import ThreadPoolExecutor

    leases = [Lease(env["params"].storage, f"locks/test/{env['name']}", ttl=30) for _ in range(6)]
    import clip_unlearn.pipeline.eventlog as ev

    ids = iter(range(100))
    orig = ev.worker_id
    try:  # six "workers" in one process: give each its own id
        ev.worker_id = lambda: f"w{next(ids)}"
        with ThreadPoolExecutor(6) as pool:
            won = list(pool.map(lambda lease: lease.try_acquire(), leases))
    finally:
        ev.worker_id = orig
    assert sum(won) == 1


def test_non_finite_weights_abort_and_nothing_is_registered(env, prefect_harness, tmp_path):
    import torch

    from flows.process import process_requests

    p, name = env["params"], f"nan-{uuid.uuid4().hex[:6]}"
    bundle = load_model("clip-ref-tiny", device="cpu")
    with torch.no_grad():
        bundle.model.visual.proj[0, 0] = float("nan")   # one bad weight: unlearning spreads it
    register_base(p, str(save_model(bundle, tmp_path / "nan-model")), name, log=lambda s: None)
    RequestStore(p.storage).submit(request(env, "nan", model=name))
    (out,) = process_requests(params_path=env["path"])
    assert out["state"] == "failed" and "non-finite" in out["reason"]
    assert reg.find(env["client"], name, request_id="nan") == []
    assert reg.aliases(env["client"], name) == {"champion": "1"}


def test_cli_submit_refuses_unknown_names_and_s3_down_loses_nothing(env, stack, prefect_harness, tmp_path):
    from servers import free_port
    from typer.testing import CliRunner

    from clip_unlearn.cli import app

    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(request(env, "typo").model_dump() | {"classes": ["sevn"]}))
    res = runner.invoke(app, ["submit", str(bad), "-p", env["path"]])
    assert res.exit_code == 2 and "did you mean 'seven'" in res.output
    store = RequestStore(env["params"].storage)
    assert "typo" not in store.ids()
    # S3 unreachable: a clear error naming the endpoint (no credential), exit code 3, nothing lost
    good = tmp_path / "good.json"
    good.write_text(json.dumps(request(env, "s3down").model_dump()))
    down = env["params"].model_copy(update={"storage": env["params"].storage.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 2, "connect_timeout": 1})})
    dpath = tmp_path / "down.yaml"
    dpath.write_text(yaml.safe_dump(json.loads(down.model_dump_json())))
    for args in (["submit", str(good)], ["status"], ["process"]):
        res = runner.invoke(app, [*args, "-p", str(dpath)])
        assert res.exit_code == 3, res.output
        assert "127.0.0.1" in res.output and stack["secret"] not in res.output and stack["key"] not in res.output
    assert runner.invoke(app, ["submit", str(good), "-p", env["path"]]).exit_code == 0
    assert store.state("s3down")["state"] == "pending"


def test_cli_refuses_unknown_model_version_or_alias_at_the_door(env, stack, tmp_path):
    """submit and erase check the model and base against the registry before anything is queued or
    started; the message lists what exists. Registry down: exit 3, fast, nothing queued."""
    import time

    from servers import free_port
    from typer.testing import CliRunner

    from clip_unlearn.cli import app

    runner, store = CliRunner(), RequestStore(env["params"].storage)
    cases = [({"model": "nope"}, ["no registered model 'nope' (registered: ", env["name"]]),
             ({"base": "7"}, [f"{env['name']}: no version '7' (aliases: champion->v1; versions: 1)"]),
             ({"base": "gold"}, [f"{env['name']}: no alias 'gold' (aliases: champion->v1; versions: 1)"])]
    for i, (change, msgs) in enumerate(cases):
        f = tmp_path / f"door-{i}.json"
        f.write_text(json.dumps(request(env, f"door-{i}").model_dump() | change))
        for cmd in (["submit", str(f)], ["erase", "--request", str(f)]):
            res = runner.invoke(app, [*cmd, "-p", env["path"]])
            assert res.exit_code == 2 and all(m in res.output for m in msgs), res.output
            assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    down = env["params"].model_copy(update={"registry": env["params"].registry.model_copy(
        update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})})
    dpath = tmp_path / "down.yaml"
    dpath.write_text(yaml.safe_dump(json.loads(down.model_dump_json())))
    f = tmp_path / "door-ok.json"
    f.write_text(json.dumps(request(env, "door-ok").model_dump()))
    for cmd in (["submit", str(f)], ["erase", "--request", str(f)]):
        t0 = time.monotonic()
        res = runner.invoke(app, [*cmd, "-p", str(dpath)])
        assert res.exit_code == 3 and "unreachable" in res.output and time.monotonic() - t0 < 30, res.output
    assert not [i for i in store.ids() if i.startswith("door-")]             # nothing queued
    assert not [d for d in Path(env["params"].erase.workdir).glob("door-*")]  # nothing started
    assert [v.version for v in reg.versions(env["client"], env["name"])] == ["1"]
    assert runner.invoke(app, ["submit", str(f), "-p", env["path"]]).exit_code == 0   # a good one passes
    assert store.state("door-ok")["state"] == "pending"


@pytest.mark.slow
def test_mlflow_stopped_mid_queue_then_restarted(env, stack, prefect_harness):
    """The tracking server really stops (its process is killed): the request is recorded as
    retry, nothing is registered; after a restart on the same port and database it completes."""
    from servers import start_mlflow, stop

    from flows.process import process_requests

    store = RequestStore(env["params"].storage)
    store.submit(request(env, "outage"))
    stop(stack["mlflow_proc"])
    try:
        (out,) = process_requests(params_path=env["path"])
        assert out["state"] == "retry" and store.state("outage")["state"] == "retry"
    finally:
        port = int(stack["mlflow"].rsplit(":", 1)[1])
        stack["mlflow_proc"], _ = start_mlflow(stack["mlflow_root"], stack, stack["bucket"], port=port)
    (out,) = process_requests(params_path=env["path"])
    assert out["state"] == "done"
    assert len(reg.find(reg.client(env["params"].registry), env["name"], request_id="outage")) == 1


@pytest.mark.slow
def test_synthetic_sets_are_stored_in_s3_and_reused(env, reference_params):
    """On the trained reference model (a random one cannot be inverted into confident images)."""
    import shutil

    p = env["params"].model_copy(update={"data": reference_params.data})
    name = f"syn-{uuid.uuid4().hex[:6]}"
    register_base(p, reference_params.model.dir, name, log=lambda s: None)
    methods = dict(p.methods)
    methods["lipschitz"] = methods["lipschitz"].model_copy(update={"synthesis": methods["lipschitz"].synthesis.model_copy(
        update={"per_class": 4, "batch_size": 8})})
    job = steps.Job.create(p.model_copy(update={"methods": methods}),
                           request(env, "syn", method="lipschitz", model=name), log=lambda s: None)
    base = steps.fetch_base(job)
    made = Path(steps.synthesize(job, base["model_dir"], base["sha256"]))
    key = f"synthetic/{made.name}"
    assert storage.exists(p.storage, f"{key}/synthetic.safetensors")
    first = (made / "synthetic.safetensors").read_bytes()
    shutil.rmtree(made)                        # another worker, another disk: fetched, not remade
    again = Path(steps.synthesize(job, base["model_dir"], base["sha256"]))
    assert again == made and (again / "synthetic.safetensors").read_bytes() == first


@pytest.mark.slow
def test_a_second_erasure_keeps_the_lineage_and_rechecks_it(env, prefect_harness):
    """v2 forgets seven; v3 (three, from v2) records both, re-checks seven against seven's own limit,
    and its certificate shows it. An earlier erasure that regresses fails the version, named."""
    from flows.erase import erase

    c, name = env["client"], env["name"]
    first = erase(request=request(env, "gdpr-1", method="text_edit", thresholds={"forget_max": 1.0}).model_dump(),
                  params_path=env["path"])
    assert first["version"] == "2" and first["method"]["kind"] == "data-free"
    second = erase(request=request(env, "gdpr-2", classes=["three"], base="2").model_dump(), params_path=env["path"])
    lineage = json.loads(c.get_model_version(name, second["version"]).tags["lineage"])
    assert [(e["request_id"], e["forgotten"], e["limit"]) for e in lineage] == \
        [("gdpr-1", "digits:seven", 1.0), ("gdpr-2", "digits:three", None)]
    assert [e["version"] for e in lineage_of(c.get_model_version(name, second["version"]))] == \
        ["2", second["version"]]
    job = steps.Job.create(env["params"], request(env, "gdpr-2", classes=["three"], base="2"))
    ver = json.loads((job.dir / "verification.json").read_text())
    assert [ch["name"] for ch in ver["checks"] if ch["name"].startswith("lineage:")] == ["lineage:gdpr-1"]
    cert = json.loads((Path(second["certificate_local"]).parent / "certificate.json").read_text())
    assert [(e["request_id"], e["version"]) for e in cert["lineage"]] == [("gdpr-1", "2")]
    assert cert["lineage"][0]["value"] is not None
    # A regressed earlier erasure (its limit below what the new version scores) fails, named.
    result = json.loads((job.dir / "result.json").read_text())
    forgotten, value = max(result["after"]["per_class"].items(), key=lambda kv: kv[1])
    assert value > 0
    strict = [{"request_id": "old-7", "forgotten": f"digits:{forgotten}", "limit": 0.0, "version": "1"}]
    out = steps.verify(job, str(job.dir / "base"), str(job.dir / "model"), str(job.dir / "result.json"), strict)
    assert out["verdict"] == "failed" and any("old-7" in r for r in out["failed"])
