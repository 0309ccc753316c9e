import numpy as np
import pytest
import torch
from conftest import run

from clip_unlearn.core.data import load_dataset
from clip_unlearn.core.measure import request_mask, request_metrics
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.train import train_reference
from clip_unlearn.methods import baselines as _baselines  # noqa: F401  (register)
from clip_unlearn.methods.oracle import oracle_train_sets


@pytest.fixture(scope="module")
def briefly_trained(tiny_params, tmp_path_factory):
    """A clip-ref-tiny trained for a few steps on the tiny data, saved once per module."""
    sets = [load_dataset(n, "train", tiny_params.data.root) for n in tiny_params.data.datasets]
    cfg = tiny_params.bootstrap.model_copy(update={"steps": 20, "batch_size": 32, "lr": 2e-3, "warmup_frac": 0.1,
                                                   "threads": torch.get_num_threads()})  # leave threads as found
    bundle, _ = train_reference(sets, cfg, log=lambda _: None)
    from clip_unlearn.core.models import save_model

    return save_model(bundle, tmp_path_factory.mktemp("brief") / "model")


@pytest.mark.parametrize("method", ["gradient_ascent", "random_labels"])
def test_baseline_lowers_forget_accuracy_on_a_briefly_trained_model(method, briefly_trained, tiny_params):
    root = tiny_params.data.root
    bundle = load_model(str(briefly_trained), device="cpu")
    # The class the model knows best on its train images (what the baseline trains on).
    per_class = request_metrics(bundle, ForgetRequest(dataset="digits", classes=["zero"]), root,
                                split="train")["per_class"]
    cls = max(per_class, key=per_class.get)
    req = ForgetRequest(dataset="digits", classes=[cls])
    before = request_metrics(bundle, req, root, split="train")["forget_top1"]
    assert before >= 0.5
    out = run(bundle, req, method, {"steps": 10, "lr": 1e-3}, data_root=root, log=lambda _: None)
    after = request_metrics(bundle, req, root, split="train")["forget_top1"]
    assert after < before - 0.3, (cls, before, after, out["info"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient_ascent", "random_labels"])
def test_baseline_forgets_a_class_of_the_reference(method, reference_params):
    bundle = load_model(reference_params.model.dir)
    req = ForgetRequest(dataset="digits", classes=["seven"])
    out = run(bundle, req, method, data_root=reference_params.data.root, others=["shapes"],
              assurance=reference_params.assurance)   # the attacks' own images held out, as in the pipeline
    assert out["before"]["forget_top1"] > 0.8
    assert out["after"]["forget_top1"] <= out["before"]["forget_top1"] - 0.5, out["after"]


@pytest.mark.parametrize("req", [
    ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"}),
    ForgetRequest(dataset="shapes", classes=["star", "ring"]),
], ids=lambda r: r.describe())
def test_oracle_training_sets_leave_out_exactly_the_forgotten_items(req, tiny_params):
    root = tiny_params.data.root
    sets = oracle_train_sets(req, root, ["digits", "shapes"])
    assert [s.name for s in sets] == ["digits", "shapes"]
    for s in sets:
        full = load_dataset(s.name, "train", root)
        if s.name != req.dataset:
            assert s.labels == full.labels  # the other dataset is whole
            continue
        forgotten = request_mask(full, req.classes, req.where)
        assert forgotten.sum() > 0
        assert not request_mask(s, req.classes, req.where).any()  # never sees a forgotten item
        assert len(s) == len(full) - forgotten.sum()
        if req.where:  # the class's other subgroups stay
            assert np.isin(s.labels, [full.classes.index(c) for c in req.classes]).any()


def test_oracle_retrains_without_the_forgotten_items(tiny_params):
    root = tiny_params.data.root
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    boot = tiny_params.bootstrap.model_copy(update={"steps": 2, "batch_size": 16})
    threads = torch.get_num_threads()
    out = run(bundle, req, "oracle", {"bootstrap": boot.model_dump()}, data_root=root,
                     log=lambda _: None)
    assert torch.get_num_threads() == threads  # the caller's thread setting is kept
    info = out["info"]
    full = load_dataset("digits", "train", root)
    assert info["steps"] == 2
    assert info["n_removed"] == request_mask(full, req.classes, req.where).sum()
    assert info["n_train"] == {"digits": len(full) - info["n_removed"],
                               "shapes": len(load_dataset("shapes", "train", root))}
    assert any(not torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())
    with pytest.raises(ValueError, match="not one of the training datasets"):
        oracle_train_sets(req, root, ["shapes"])


@pytest.mark.parametrize("method", ["gradient_ascent", "subgroup"])
def test_a_method_that_reads_forgotten_images_never_reads_the_attacks_own(method, tiny_params, tiny_model_dir, reads):
    from conftest import TINY_ATTACKS

    from clip_unlearn.core.depth import attacker_items
    from clip_unlearn.core.splits import cached_split

    req = ForgetRequest(dataset="digits", classes=["seven"])
    cfg = {"steps": 2} if method == "gradient_ascent" else \
        {"fisher_batches": 1, "forget_steps": 1, "remind_steps": 1, "remind_batch_size": 8, "alpha_grid": [1.0]}
    run(load_model(tiny_model_dir, device="cpu"), req, method, cfg, tiny_params.data.root, ["shapes"])
    train = cached_split("digits", "train", tiny_params.data.root)
    held = train.subset(attacker_items(train, req, TINY_ATTACKS.depth))
    sevens = {train._load.paths[j] for j in train.select(["seven"])._indices}
    assert set(reads) & sevens   # it read forgotten train images ...
    assert not set(reads) & {train._load.paths[j] for j in held._indices}   # ... never the attacks' own
