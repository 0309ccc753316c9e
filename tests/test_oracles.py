"""Retrain oracles: cached by reference weights and request, read back as the certificates' yardstick;
a benchmark restricted to the requests with an oracle row."""

import json

import pytest

from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256, load_model, save_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.pipeline.benchmark import refresh_yardstick, run_benchmark
from clip_unlearn.pipeline.oracles import oracle_model, yardstick

SEVEN = ForgetRequest(dataset="digits", classes=["seven"])


def test_an_oracle_is_trained_once_and_the_yardstick_reads_only_cached_ones(tiny_params, tmp_path):
    ref = save_model(load_model("clip-ref-tiny", device="cpu"), tmp_path / "ref",
                     meta={"bootstrap": tiny_params.bootstrap.model_dump(), "datasets": ["digits", "shapes"]})
    b = tiny_params.benchmark
    p = tiny_params.model_copy(update={
        "model": tiny_params.model.model_copy(update={"dir": str(ref)}),
        "assurance": tiny_params.assurance.model_copy(update={"relearn_steps": 2, "relearn_batch_size": 8,
                                                              "relearn_eval_every": 1, "probe_max_iter": 10}),
        "benchmark": b.model_copy(update={
            "classes": {"digits": ["seven"]}, "multi_class": [], "subgroups": [],
            "oracle_cache": str(tmp_path / "cache"), "yardstick": str(tmp_path / "yardstick.json"),
            "out": str(tmp_path / "benchmark.json"),
            "holdout": b.holdout.model_copy(update={"oracle_classes": 0, "oracle_pairs": 0, "oracle_subgroups": 0})})})
    quiet = lambda _: None  # noqa: E731
    first = refresh_yardstick(p, log=quiet)
    assert first["missing"] == ["digits:seven"] and first["rows"] == []   # nothing trained by a refresh
    base, sha = load_model(str(ref), device="cpu"), file_sha256(ref / WEIGHTS_FILE)
    assert yardstick(p, sha, SEVEN) is None
    _, trained = oracle_model(p, base, sha, SEVEN, 0, log=quiet)
    _, again = oracle_model(p, base, sha, SEVEN, 0, log=quiet)
    assert not trained["cached"] and again["cached"] and again["weights_sha256"] == trained["weights_sha256"]
    out = refresh_yardstick(p, log=quiet)
    assert out["missing"] == [] and [r["forget"] for r in out["rows"]] == ["digits:seven"]
    ys = yardstick(p, sha, SEVEN)
    assert ys["kind"] == "the model retrained without it"
    assert set(ys["values"]) == {"prototypes", "probe", "relearn_attack", "paraphrase"}
    assert all(0 <= v <= 1 for v in ys["values"].values())
    assert yardstick(p, "another-reference", SEVEN)["kind"].startswith("the most any model")  # named max instead

    # a run restricted to the requests with an oracle, one method and the oracle: the cached one, no other file
    rows = tmp_path / "restricted.json"
    out = run_benchmark(p, log=quiet, holdout=False, oracle_requests_only=True, methods=["text_edit", "oracle"],
                        out=str(rows))
    assert [(r["forget"], r["method"]) for r in out["rows"]] == [("digits:seven", "text_edit"), ("digits:seven", "oracle")]
    assert out["rows"][1]["seconds"] == trained["train_seconds"]   # read from the cache, not retrained
    assert json.loads(rows.read_text())["rows"] == out["rows"] and not (tmp_path / "benchmark.json").exists()
    with pytest.raises(ConfigError, match="no benchmark request digits:three in this run; its requests: digits:seven"):
        run_benchmark(p, log=quiet, holdout=False, requests=["digits:three"], out=str(rows))
    with pytest.raises(ConfigError, match="out path"):
        run_benchmark(p, log=quiet, methods=["text_edit"])
    with pytest.raises(ConfigError, match="unknown method no_such"):
        run_benchmark(p, log=quiet, methods=["no_such"], out=str(rows))
