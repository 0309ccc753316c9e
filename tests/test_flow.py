import json
from pathlib import Path

import yaml

from flows.bootstrap import bootstrap


def test_bootstrap_flow_runs_and_skips_current_model(tiny_params, tmp_path, prefect_harness):
    params = tiny_params.model_copy(update={"model": tiny_params.model.model_copy(
        update={"dir": str(tmp_path / "model")})})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump()))

    out = bootstrap(params_path=str(path))
    assert set(out["results"]) == {"digits", "shapes"}
    summary = json.loads(Path(params.evaluation.out).read_text())
    for name, row in summary.items():
        assert set(row) == {"top1", "mean_per_class_recall"}
        assert 0 <= row["top1"] <= 1
    weights = Path(out["model_dir"]) / "open_clip_model.safetensors"
    mtime = weights.stat().st_mtime_ns

    again = bootstrap(params_path=str(path))  # same params: the model is current, not retrained
    assert weights.stat().st_mtime_ns == mtime
    assert again["results"] == out["results"]
