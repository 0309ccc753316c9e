import pytest
import torch
from conftest import TINY_ATTACKS

from clip_unlearn.core import assurance, splits
from clip_unlearn.core.assurance import AssuranceConfig, fit_probe, probe_check, relearn_check
from clip_unlearn.core.data import ImageDataset
from clip_unlearn.core.measure import request_mask
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError, validate
from clip_unlearn.methods import UnlearnContext

SEVEN = ForgetRequest(dataset="digits", classes=["seven"])
RED_SEVEN = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
QUICK = AssuranceConfig(relearn_steps=4, relearn_batch_size=16, relearn_eval_every=2, relearn_lr=1e-3,
                        probe_max_iter=30)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return load_model("clip-ref-tiny", device="cpu")


@pytest.fixture(scope="module")
def two_runs(tiny_model, tiny_params, tmp_path_factory):
    """The relearning check and the probe twice with the same inputs, into two folders."""
    state = {k: v.clone() for k, v in tiny_model.model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in tiny_model.model.named_parameters()}
    rng = torch.get_rng_state()
    dirs = [tmp_path_factory.mktemp(f"assurance{i}") for i in range(2)]
    root = tiny_params.data.root
    runs = [{"relearn": relearn_check(tiny_model, SEVEN, root, QUICK, d / "relearn.png", limit=0.5),
             "probe": probe_check(tiny_model, tiny_model, SEVEN, root, QUICK, d / "probe.png")} for d in dirs]
    return {"runs": runs, "dirs": dirs, "state": state, "flags": flags,
            "rng_kept": torch.equal(torch.get_rng_state(), rng)}


def test_same_inputs_give_the_same_curve_and_the_same_figures(two_runs):
    a, b = two_runs["runs"]
    assert a["relearn"]["forget_top1_curve"] == b["relearn"]["forget_top1_curve"]
    assert [s for s, _ in a["relearn"]["forget_top1_curve"]] == [0, 2, 4]
    assert a["probe"]["new_balanced_accuracy"] == b["probe"]["new_balanced_accuracy"]
    for name in ("relearn.png", "probe.png"):
        x, y = (d / name for d in two_runs["dirs"])
        assert x.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and x.read_bytes() == y.read_bytes()
    assert a["relearn"]["figure"] == str(two_runs["dirs"][0] / "relearn.png")
    assert a["probe"]["figure"] == str(two_runs["dirs"][0] / "probe.png")


def test_relearn_leaves_the_input_model_and_the_global_rng_alone(two_runs, tiny_model):
    after = tiny_model.model.state_dict()
    assert all(torch.equal(two_runs["state"][k], after[k]) for k in after)
    assert {n: p.requires_grad for n, p in tiny_model.model.named_parameters()} == two_runs["flags"]
    assert not tiny_model.model.training
    assert two_runs["rng_kept"]


def test_result_is_json_ready_and_consistent(two_runs):
    import json

    res = two_runs["runs"][0]
    json.dumps(res)
    r, p = res["relearn"], res["probe"]
    accs = [acc for _, acc in r["forget_top1_curve"]]
    assert (r["forget_top1_start"], r["forget_top1_end"], r["forget_top1_max"]) == (accs[0], accs[-1], max(accs))
    assert r["passed"] == (max(accs) <= 0.5) and r["threshold"] == 0.5
    assert "seven" not in r["candidates"]  # the forgotten class does not compete in the relearn loss
    assert p["drop"] == 0.0 and p["gate"] is False


def test_relearn_start_matches_request_metrics(tiny_model, tiny_params):
    from clip_unlearn.core.measure import request_metrics

    res = relearn_check(tiny_model, SEVEN, tiny_params.data.root, QUICK.model_copy(update={"relearn_steps": 0}))
    assert res["forget_top1_curve"] == [[0, request_metrics(tiny_model, SEVEN, tiny_params.data.root)["forget_top1"]]]


def _guard_forgotten_train_images(monkeypatch, request):
    """Train splits whose forgotten images raise when decoded (retained ones load as usual)."""
    real = splits.cached_split

    def guarded(spec, split, root):
        ds = real(spec, split, root)
        if split != "train":
            return ds
        forbidden = set(ds._indices[request_mask(ds, request.classes, request.where)].tolist())
        assert forbidden

        def load(j):
            if j in forbidden:
                raise AssertionError(f"read forgotten train image {j}")
            return ds._load(j)

        return ImageDataset(ds.name, ds.classes, load, ds._labels, ds.attributes, ds._attrs, ds.split, ds._indices)

    monkeypatch.setattr(splits, "cached_split", guarded)
    return guarded


@pytest.mark.parametrize("request_", [SEVEN, RED_SEVEN], ids=["class", "subgroup"])
def test_relearn_never_reads_forgotten_train_images(request_, tiny_model, tiny_params, monkeypatch):
    expected = relearn_check(tiny_model, request_, tiny_params.data.root, QUICK)
    _guard_forgotten_train_images(monkeypatch, request_)
    ctx = UnlearnContext(request=request_, data_root=tiny_params.data.root, assurance=TINY_ATTACKS)
    with pytest.raises(AssertionError, match="forgotten train image"):  # the guard does bite
        ctx.forget_set("train").tensors()
    guarded = relearn_check(tiny_model, request_, tiny_params.data.root, QUICK)
    assert guarded["forget_top1_curve"] == expected["forget_top1_curve"]
    # a subgroup's class keeps competing: its other subgroups are retained images of it
    assert ("seven" in guarded["candidates"]) == bool(request_.where)


def test_probe_on_identical_models_drops_nothing(tiny_model, tiny_params, tmp_path):
    cfg = QUICK.model_copy(update={"probe_margin": 0.1})
    res = probe_check(tiny_model, tiny_model, SEVEN, tiny_params.data.root, cfg, tmp_path / "p.png")
    assert res["drop"] == 0.0 and res["base_balanced_accuracy"] == res["new_balanced_accuracy"]
    assert res["passed"] is False and "still linearly separable" in res["summary"]
    assert (tmp_path / "p.png").is_file()
    res0 = probe_check(tiny_model, tiny_model, SEVEN, tiny_params.data.root,
                       cfg.model_copy(update={"probe_margin": 0.0}))
    assert res0["passed"] is True and res0["figure"] is None


def test_linear_probe_uses_balanced_accuracy():
    g = torch.Generator().manual_seed(0)
    y = (torch.arange(400) % 10 == 0).double()  # 1:9 imbalance
    signal = torch.randn(400, 8, generator=g, dtype=torch.float64)
    signal[:, 0] += 8 * y  # separable along the first dimension
    score = fit_probe(signal[:300], y[:300], max_iter=100)
    acc, bal = assurance._scores(score(signal[300:]) > 0, y[300:])
    assert bal > 0.95 and acc > 0.95
    # No signal: the class-weighted probe does not win by saying "retained" to everything.
    noise = torch.randn(400, 8, generator=g, dtype=torch.float64)
    acc, bal = assurance._scores(fit_probe(noise[:300], y[:300], max_iter=100)(noise[300:]) > 0, y[300:])
    assert abs(bal - 0.5) < 0.2 and acc < 0.9
    with pytest.raises(ValueError):
        fit_probe(noise, torch.zeros(400, dtype=torch.float64))


def test_config_rejects_unknown_keys_and_out_of_range_values():
    with pytest.raises(ConfigError, match="relearn_step: unknown key"):
        validate(AssuranceConfig, {"relearn_step": 3}, "params.yaml: assurance")
    with pytest.raises(ConfigError, match="relearn_lr"):
        validate(AssuranceConfig, {"relearn_lr": 1.5}, "params.yaml: assurance")
    assert validate(AssuranceConfig, {}, "params.yaml: assurance") == AssuranceConfig()


def test_figure_bytes_do_not_depend_on_the_matplotlib_version(tmp_path):
    res = {"forget_top1_curve": [[0, 0.1], [5, 0.3]], "threshold": 0.5, "passed": True}
    path = assurance._plot_relearn(res, SEVEN, tmp_path / "r.png")
    assert b"matplotlib" not in path.read_bytes().lower()
