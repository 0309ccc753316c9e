import json

import torch
import yaml
from typer.testing import CliRunner

from clip_unlearn.cli import app
from clip_unlearn.models import load_model, save_model

runner = CliRunner()


def test_methods_lists_the_registry():
    out = runner.invoke(app, ["methods"])
    assert out.exit_code == 0
    for name in ("projection", "lipschitz", "subgroup", "gradient_ascent", "random_labels", "oracle"):
        assert name in out.output


def test_forget_writes_model_and_report_and_refuses_bad_input(tiny_params, tmp_path):
    torch.manual_seed(0)
    model_dir = save_model(load_model("clip-ref-tiny", device="cpu"), tmp_path / "base")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params.model_dump()))
    args = ["forget", "-p", str(params), "--model", str(model_dir), "--out", str(tmp_path / "out"),
            "--report", str(tmp_path / "r.json")]
    out = runner.invoke(app, args + ["--method", "projection", "--class", "seven"])
    assert out.exit_code in (0, 1), out.output  # 1 = ran, but a random model misses the targets
    assert json.loads((tmp_path / "r.json").read_text())["method"] == "projection"
    assert (tmp_path / "out" / "open_clip_model.safetensors").is_file()

    bad = runner.invoke(app, args + ["--class", "sevn"])
    assert bad.exit_code == 2 and "did you mean 'seven'" in bad.output
    bad = runner.invoke(app, args + ["--method", "nope"])
    assert bad.exit_code == 2 and "unknown method 'nope'" in bad.output


def test_bad_params_file_exits_2(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("bootstrap: {stepz: 1}\n")
    out = runner.invoke(app, ["data", "-p", str(params)])
    assert out.exit_code == 2 and "bootstrap.stepz: unknown key" in out.output


def test_progress_bars_only_at_a_terminal(monkeypatch):
    from clip_unlearn import progress

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.enabled() and list(progress.track(range(3), "x")) == [0, 1, 2]
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.enabled() and list(progress.track(iter(range(3)), "x", total=3)) == [0, 1, 2]
    monkeypatch.setenv("CLIP_UNLEARN_PROGRESS", "0")
    assert not progress.enabled()
