"""`dvc repro` on a copy of the repository with shrunk params: runs every stage, then nothing."""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_dvc_repro_runs_then_is_a_no_op(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["scale"] = 0.05
    params["bootstrap"].update(steps=4, batch_size=32)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)

    first = run(["dvc", "repro"], work)
    for stage in ("data", "reference", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((work / "metrics" / "reference.json").read_text())
    assert set(metrics) == {"digits", "shapes"}
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], work)

    params["bootstrap"]["steps"] = 5  # a bootstrap param reruns the model and evaluation, not the data
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    third = run(["dvc", "repro"], work)
    assert "Running stage 'reference'" in third and "Running stage 'evaluate'" in third
    assert "Running stage 'data'" not in third
    shown = run(["dvc", "metrics", "show", "--json"], work)
    assert "top1" in shown
