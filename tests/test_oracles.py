"""Retrain oracles: cached by reference weights and request, read back as the certificates' yardstick."""

from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256, load_model, save_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.pipeline.benchmark import refresh_yardstick
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
