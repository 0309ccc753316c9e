"""Depth: the four attacks of someone who holds the weights, and the gate's depth checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import image_paths

from clip_unlearn.core import depth
from clip_unlearn.core.assurance import AssuranceConfig
from clip_unlearn.core.depth import METRICS, DepthConfig, attacker_items, measure_depth, prototypes
from clip_unlearn.core.gate import Thresholds, depth_checks
from clip_unlearn.core.models import changed_parts, load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.splits import cached_split
from clip_unlearn.methods import UnlearnContext

QUICK = DepthConfig(shots=3, probe_per_class=8, probe_max_iter=20, attack_steps=2, attack_batch_size=16)
SEVEN = ForgetRequest(dataset="digits", classes=["seven"])
TINY = AssuranceConfig(enabled=False, depth=DepthConfig(shots=3, probe_per_class=8))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("clip-ref-tiny", device="cpu")


def test_every_figure_is_a_recall_and_a_rerun_gives_the_same_numbers(model, tiny_params):
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    a = measure_depth(model, SEVEN, tiny_params.data.root, QUICK, split="val")
    b = measure_depth(model, SEVEN, tiny_params.data.root, QUICK, split="val")
    assert {m: a[m] for m in METRICS} == {m: b[m] for m in METRICS}
    assert all(0.0 <= a[m] <= 1.0 for m in METRICS) and a["n_forget"] > 0
    assert all(torch.equal(state[k], v) for k, v in model.model.state_dict().items())   # the attack used a copy


def test_a_subgroup_is_scored_on_its_own_images(model, tiny_params):
    red = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    ds = cached_split("digits", "val", tiny_params.data.root)
    got = measure_depth(model, red, tiny_params.data.root, QUICK, split="val", metrics=("prototypes", "paraphrase"))
    assert got["n_forget"] == int(red.covers(ds).sum()) < int(SEVEN.covers(ds).sum())


def test_an_earlier_erasure_is_never_read(model, tiny_params, reads):
    """With digits:three in the lineage, no three (any split) is decoded by any attack."""
    three = ForgetRequest(dataset="digits", classes=["three"])
    got = measure_depth(model, SEVEN, tiny_params.data.root, QUICK, split="val", lineage=[three])
    assert got["n_forget"] > 0 and reads, "the check is void: nothing was read"
    assert not set(reads) & image_paths(tiny_params.data.root, [three])


def test_prototypes_predict_the_nearest_class_mean():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    assert prototypes(feats, labels, torch.tensor([[1.0, 0.2], [0.2, 1.0]]), 3).tolist() == [0, 1]  # class 2: no shot


def test_depth_checks_use_the_class_or_the_subgroup_limits():
    th = Thresholds(depth_probe_max=0.6, subgroup_depth_probe_max=0.9)
    depth = {"probe": 0.7, "prototypes": 0.2}
    # the class defaults stay in force beside the one set here (prototypes 0.73); subgroups have none yet
    assert [(c["name"], c["passed"]) for c in depth_checks(depth, th, subgroup=False)] == \
        [("depth_prototypes", True), ("depth_probe", False)]
    assert [(c["name"], c["passed"]) for c in depth_checks(depth, th, subgroup=True)] == [("depth_probe", True)]


def test_changed_parts_tell_the_towers_apart(model):
    import copy

    other = copy.deepcopy(model.model)
    with torch.no_grad():
        other.text_projection.add_(1.0)
    parts = changed_parts(model.model, other)
    assert parts["image tower"]["changed"] == 0 and parts["text tower"]["changed"] == 1
    assert parts["image tower"]["tensors"] > 10


def _paths(ds) -> set[str]:
    return {ds._load.paths[j] for j in ds._indices}


@pytest.mark.parametrize("request_", [SEVEN, ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})],
                         ids=["class", "subgroup"])
def test_a_method_gets_every_forgotten_train_image_but_those_the_attacks_hold(request_, tiny_params):
    ctx = UnlearnContext(request=request_, data_root=tiny_params.data.root, assurance=TINY)
    train = ctx.dataset("train")
    held, given = _paths(train.subset(attacker_items(train, request_, TINY.depth))), _paths(ctx.forget_set("train"))
    assert held and given and not held & given
    assert held | given == _paths(train.select(request_.classes, request_.where or None))
    assert len(ctx.forget_set("val")) == len(ctx.dataset("val").select(request_.classes, request_.where or None))


def test_the_held_images_are_the_ones_the_attacks_pick(model, tiny_params, monkeypatch):
    """Every forgotten train image an attack picks (shots, probe images) is in attacker_items, and no other."""
    picked = []
    original = depth._pick
    monkeypatch.setattr(depth, "_pick", lambda *a: picked.append(original(*a)) or picked[-1])
    train = cached_split("digits", "train", tiny_params.data.root)
    measure_depth(model, SEVEN, tiny_params.data.root, QUICK, split="val", metrics=("prototypes", "probe", "relearn_attack"))
    sevens = np.flatnonzero(np.array(train.labels) == train.classes.index("seven"))
    got = np.intersect1d(torch.cat(picked).numpy(), sevens)
    assert len(picked) == 3 and len(got) and np.array_equal(got, attacker_items(train, SEVEN, QUICK))


def test_a_class_the_attacks_hold_whole_leaves_nothing_to_read(tiny_params):
    every = AssuranceConfig(enabled=False, depth=DepthConfig(probe_per_class=100_000))
    with pytest.raises(ValueError, match="hold all .* train images"):
        UnlearnContext(request=SEVEN, data_root=tiny_params.data.root, assurance=every).forget_set("train")
