"""One artifact state: the Quickstart's data and reference model are DVC's outputs. In a fresh
clone of the working tree (shrunk params), the Quickstart's path (`dvc repro evaluate`, then
`unlearn bootstrap --register` against the `stack` fixture's S3 + MLflow) leaves `dvc status`
clean for data -> reference -> evaluate; run again, nothing is built, trained or registered twice."""

import json
import os
import shutil
import subprocess
import uuid

import pytest
import yaml
from conftest import REPO

STAGES = ["data", "reference", "evaluate"]
QUICKSTART = [["dvc", "repro", "evaluate"], ["unlearn", "bootstrap", "--register"]]  # scripts/quickstart.sh


def run(cmd, cwd, env=None):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def fresh_clone(dest):
    """What a clone of the working tree holds: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


@pytest.mark.slow
def test_quickstart_outputs_are_dvc_outputs(tmp_path, stack):
    work = tmp_path / "clone"
    fresh_clone(work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["scale"] = 0.05
    params["bootstrap"].update(steps=4, batch_size=32)
    name = f"qs-{uuid.uuid4().hex[:6]}"
    params["storage"].update(bucket=stack["bucket"], prefix=name)
    params["registry"].update(model_name=name)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], work)
    run(["git", "add", "-A"], work)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fresh clone"], work)

    # the clone's own code runs (and writes its bytecode next to the sources that are stage deps)
    env = {**os.environ, "PYTHONPATH": f"{work / 'src'}{os.pathsep}{work}", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    for k in ("PYTHONDONTWRITEBYTECODE", "PREFECT_API_URL"):
        env.pop(k, None)

    first = [run(cmd, work, env) for cmd in QUICKSTART]
    assert all(f"Running stage '{s}'" in first[0] for s in STAGES)
    assert f"base model in the registry: {name} v1" in first[1]
    assert (work / "src" / "clip_unlearn" / "core" / "data" / "__pycache__").is_dir()
    config = json.loads((work / "models" / "reference" / "open_clip_config.json").read_text())
    assert "train_seconds" not in config["clip_unlearn"]
    timing = json.loads((work / "models" / "reference.timing.json").read_text())
    assert timing["train_seconds"] > 0 and timing["weights_sha256"] == config["clip_unlearn"]["sha256"]

    assert "Data and pipelines are up to date" in run(["dvc", "status", *STAGES], work, env)
    assert "Running stage" not in run(["dvc", "repro", "--dry", "evaluate"], work, env)
    weights = work / "models" / "reference" / "open_clip_model.safetensors"
    mtime = weights.stat().st_mtime_ns

    second = [run(cmd, work, env) for cmd in QUICKSTART]   # run it again: nothing twice
    assert "Running stage" not in second[0]
    assert "is current; not retraining" in second[1] and f"{name} v1" in second[1]
    assert weights.stat().st_mtime_ns == mtime
    assert "Data and pipelines are up to date" in run(["dvc", "status", *STAGES], work, env)
    # only what shrunk params change is modified; run-to-run files are git-ignored, nothing else appears
    changed = {line[3:] for line in run(["git", "status", "--porcelain"], work).splitlines()}
    assert changed <= {"dvc.lock", "metrics/reference.json"}
