"""`dvc repro` on a copy of the repository with shrunk params: runs every stage but the benchmark (data ->
reference -> evaluate -> synthesize -> unlearn -> verify -> register, the last against the real
S3 + MLflow of the `stack` fixture), then nothing; pushes to the S3 remote."""

import json
import os
import shutil
import subprocess
import uuid

import pytest
import yaml
from conftest import LENIENT, REPO


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


# Every stage but the benchmark (hours on the full data; plain `dvc repro` runs it too).
REPRO = ["dvc", "repro", "evaluate", "register"]


@pytest.mark.slow
def test_dvc_repro_runs_then_is_a_no_op(tmp_path, stack):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["scale"] = 0.05
    params["bootstrap"].update(steps=4, batch_size=32)
    name = f"dvc-{uuid.uuid4().hex[:6]}"
    params["storage"].update(bucket=stack["bucket"], prefix=name)
    params["registry"].update(model_name=name)
    params["forget"]["method"] = "projection"
    params["gate"].update(LENIENT)
    params["assurance"].update(relearn_steps=2, relearn_batch_size=8, relearn_eval_every=1, probe_max_iter=10)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{stack['bucket']}/{name}/dvc"], work)
    run(["dvc", "remote", "modify", "storage", "endpointurl", os.environ["AWS_ENDPOINT_URL"]], work)

    first = run(REPRO, work)
    for stage in ("data", "reference", "evaluate", "synthesize", "unlearn", "verify", "register"):
        assert f"Running stage '{stage}'" in first
    assert "Running stage 'benchmark'" not in first
    metrics = json.loads((work / "metrics" / "reference.json").read_text())
    assert set(metrics) == {"digits", "shapes"}
    erasure = json.loads((work / "metrics" / "erasure.json").read_text())
    assert erasure["passed"] is True and erasure["model"] == name and erasure["version"] == 2
    assert {"forget_top1", "retain_top1", "other_top1"} <= set(erasure["before"]) <= set(erasure["after"])
    assert "Data and pipelines are up to date" in run(REPRO, work)
    run(["dvc", "push"], work)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], work)
    assert (tmp_path / "plots" / "index.html").is_file()

    params["methods"]["projection"]["lam"] = 0.02  # a method param reruns unlearn and after, only
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    second = run(REPRO, work)
    ran = {s for s in ("data", "reference", "evaluate", "synthesize", "unlearn", "verify", "register")
           if f"Running stage '{s}'" in second}
    assert ran == {"unlearn", "verify", "register"}
    assert json.loads((work / "metrics" / "erasure.json").read_text())["version"] == 3

    params["bootstrap"]["steps"] = 5  # a bootstrap param reruns the model and evaluation, not the data
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    third = run(REPRO, work)
    assert "Running stage 'reference'" in third and "Running stage 'evaluate'" in third
    assert "Running stage 'data'" not in third and "Running stage 'register'" in third
    shown = run(["dvc", "metrics", "show", "--json"], work)
    assert "top1" in shown


def test_the_reference_check_uses_dvcs_own_folder_hash(tmp_path):
    """lock_check says whether a trained reference is the committed one; its hash is DVC's (`dvc add`)."""
    from clip_unlearn.pipeline.provenance import folder_md5
    from clip_unlearn.pipeline.reference import lock_check

    model = tmp_path / "models" / "reference"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(bytes(range(256)))
    (model / "sub" / "config.json").write_text('{"a": 1}\n')
    run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    run(["dvc", "add", "-q", "models/reference"], tmp_path)
    added = yaml.safe_load((tmp_path / "models" / "reference.dvc").read_text())["outs"][0]["md5"]
    assert folder_md5(model) == added
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"stages": {"reference": {"outs": [{"path": "models/reference", "md5": added}]}}}))
    assert "the committed one" in lock_check(model, lock)
    (model / "weights.bin").write_bytes(bytes(range(255)))
    assert "other weights" in lock_check(model, lock)
