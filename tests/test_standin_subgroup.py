"""standin_subgroup: a subgroup leaves its class in the image tower, trained on attribute-swapped stand-ins."""

import numpy as np
import pytest
import torch
from conftest import run

from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.methods.stand_ins import swap_attributes
from clip_unlearn.methods.standin_subgroup import tail_names

RED_SEVEN = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
QUICK = {"forget_steps": 2, "remind_steps": 2, "remind_batch_size": 16, "forget_batch_size": 8,
         "other_batch_size": 8, "alpha_grid": [1.0]}


def test_swapped_features_land_on_the_subgroup_when_features_add_up():
    torch.manual_seed(0)
    cls, attr = torch.randn(3, 8), {"red": torch.randn(8), "blue": torch.randn(8)}
    items = [(c, a) for c in range(3) for a in ("red", "blue") for _ in range(4) if (c, a) != (0, "red")]
    feats = torch.stack([cls[c] + attr[a] + 0.01 * torch.randn(8) for c, a in items])
    labels = torch.tensor([c for c, _ in items])
    attrs = {"ink": np.array([a for _, a in items])}
    swapped, index = swap_attributes(feats, labels, attrs, {"ink": ["red", "blue"]}, 0, {"ink": "red"})
    assert index.tolist() == [i for i, (c, _) in enumerate(items) if c == 0]   # built from class 0's blue items
    assert torch.allclose(swapped, (cls[0] + attr["red"]).expand_as(swapped), atol=0.05)
    with pytest.raises(ValueError, match="no other class of the dataset has ink=green"):
        swap_attributes(feats, labels, attrs, {"ink": ["red", "blue", "green"]}, 0, {"ink": "green"})


def test_only_the_tail_of_the_image_tower_moves_and_runs_repeat(tiny_params):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        bundle = load_model("clip-ref-tiny", device="cpu")
        before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
        res = run(bundle, RED_SEVEN, "standin_subgroup", QUICK, tiny_params.data.root, ["shapes"],
                         seed=3, log=lambda _: None)
        after = bundle.model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert res["data_free"] is True and res["info"]["n_stand_ins"] > 0 and res["info"]["alpha"] == 1.0
        assert changed and changed <= set(tail_names(bundle.model, 2))
        assert not any(k.startswith("visual.transformer.resblocks.0.") for k in changed)  # the head is frozen
        runs.append(after)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("request_, cfg, error, message", [
    (ForgetRequest(dataset="digits", classes=["seven"]), {}, ConfigError, "subgroups"),
    (RED_SEVEN, {"split_layer": 4}, ConfigError, "split_layer 4 leaves no block to train"),
])
def test_bad_requests_and_configs_are_refused_with_a_reason(tiny_params, request_, cfg, error, message):
    bundle = load_model("clip-ref-tiny", device="cpu")
    with pytest.raises(error, match=message):
        run(bundle, request_, "standin_subgroup", cfg, tiny_params.data.root, log=lambda _: None)


@pytest.mark.slow
def test_a_dev_subgroup_is_forgotten_data_free_and_stays_forgotten(reference_params):
    """digits:eight[ink=red], one of the dev subgroups its defaults were chosen on (val split, as then):
    every subgroup target, and a short fine-tune on retained data does not bring it back."""
    from clip_unlearn.core.gate import assess, failed_reasons
    from clip_unlearn.core.measure import request_metrics

    p = reference_params
    bundle = load_model(p.model.dir, device="cpu")
    req = ForgetRequest(dataset="digits", classes=["eight"], where={"ink": "red"})
    before = request_metrics(bundle, req, p.data.root, ["shapes"], split="val")
    res = run(bundle, req, "standin_subgroup", p.methods["standin_subgroup"], p.data.root, ["shapes"], gate=p.gate)
    judged = assess(bundle, req, before, p.gate, data_root=p.data.root, others=["shapes"], split="val",
                    assurance=p.assurance, measure_all=True)
    assert res["data_free"] is True and before["forget_top1"] > 0.5
    assert judged["passed"], failed_reasons(judged["checks"])   # every subgroup target and the relearning check
