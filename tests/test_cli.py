import json

import torch
import yaml
from typer.testing import CliRunner

from clip_unlearn.cli import app
from clip_unlearn.core.models import load_model, save_model

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
    from clip_unlearn.core import progress

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.enabled() and list(progress.track(range(3), "x")) == [0, 1, 2]
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.enabled() and list(progress.track(iter(range(3)), "x", total=3)) == [0, 1, 2]
    monkeypatch.setenv("CLIP_UNLEARN_PROGRESS", "0")
    assert not progress.enabled()


def _one_line(res) -> bool:
    return len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_request_files_that_are_not_json_text_exit_2_in_one_line(tiny_params, tmp_path):
    from clip_unlearn.pipeline.request_store import MAX_REQUEST_BYTES

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params.model_dump()))
    files = {"binary": (b"\x00\x01\x02garbage", "a binary file (NUL byte at offset 0)"),
             "latin1": ('{"id": "café"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 11)"),
             "empty": (b"", "empty file"),
             "blank": (b" \n\t\n", "empty file"),
             "huge": (b'{"id": "' + b"a" * MAX_REQUEST_BYTES + b'"}', "larger than 1 MiB"),
             "deep": (b"[" * 100_000, "JSON nested too deeply"),
             "list": (b"[1, 2]", "must be a JSON object"),
             "long": (json.dumps({"reason": "x" * 900_000}).encode(), "reason: String should have at most 2000")}
    for name, (body, msg) in files.items():
        (tmp_path / f"{name}.json").write_bytes(body)
        for cmd in (["submit", str(tmp_path / f"{name}.json")], ["erase", "--request", str(tmp_path / f"{name}.json")]):
            res = runner.invoke(app, [*cmd, "-p", str(params)])
            assert res.exit_code == 2 and msg in res.output and _one_line(res), (name, res.output[:500])
            assert len(res.output) < 3000
    for path, msg in ((tmp_path / "missing.json", "no such request file"), (tmp_path, "not a regular file")):
        res = runner.invoke(app, ["submit", str(path), "-p", str(params)])
        assert res.exit_code == 2 and msg in res.output and _one_line(res)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tiny_params, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params.model_dump()))
    args = ["evaluate", "-p", str(params), "--model", str(tmp_path / "no-such-model")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "unknown model" in res.output and _one_line(res), res.output
    res = runner.invoke(app, ["--debug", *args])
    assert res.exit_code == 2 and "Traceback (most recent call last)" in res.output and "unknown model" in res.output
    res = runner.invoke(app, ["data", "-p", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "no such params file" in res.output and _one_line(res)
