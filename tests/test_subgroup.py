import pytest
import torch
from conftest import run

from clip_unlearn.core.finetune import fisher_diag, rank_by_fisher_ratio
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.methods import subgroup as _registers  # noqa: F401
from clip_unlearn.methods.soup import choose_soup_alpha

GRID = [
    {"alpha": 0.0, "forget_top1": 0.90, "retain": 0.95},
    {"alpha": 0.3, "forget_top1": 0.40, "retain": 0.94},
    {"alpha": 0.5, "forget_top1": 0.08, "retain": 0.90},
    {"alpha": 0.7, "forget_top1": 0.02, "retain": 0.92},
    {"alpha": 1.0, "forget_top1": 0.00, "retain": 0.80},
]


def test_soup_alpha_keeps_most_retained_accuracy_under_the_forget_target():
    assert choose_soup_alpha(GRID, target=0.1) == 0.7
    assert choose_soup_alpha(GRID, target=0.5) == 0.3
    assert choose_soup_alpha(GRID, target=0.01) == 1.0


def test_soup_alpha_deepest_takes_the_largest_alpha_within_the_margin():
    assert choose_soup_alpha(GRID, target=0.1, rule="deepest", margin=0.85) == 0.7  # 1.0 leaves only 0.80 unused
    assert choose_soup_alpha(GRID, target=0.1, rule="deepest", margin=0.5) == 1.0
    assert choose_soup_alpha(GRID, target=0.1, rule="deepest", margin=0.95) == 0.7  # none within: as "retain"
    assert choose_soup_alpha(GRID, target=0.01, rule="deepest", margin=0.0) == 1.0


def test_soup_alpha_falls_back_to_lowest_forget_accuracy():
    grid = [{"alpha": 0.0, "forget_top1": 0.9, "retain": 0.95},
            {"alpha": 0.5, "forget_top1": 0.3, "retain": 0.90},
            {"alpha": 0.8, "forget_top1": 0.2, "retain": 0.70},
            {"alpha": 1.0, "forget_top1": 0.2, "retain": 0.50}]
    assert choose_soup_alpha(grid, target=0.1) == 0.8  # lowest forget; tie broken by retained accuracy
    with pytest.raises(ValueError):
        choose_soup_alpha([])


def test_fisher_ratio_ranks_by_ratio_not_by_forget_fisher():
    forget = {"a": 10.0, "b": 1.0, "c": 0.5, "d": 0.0}
    retain = {"a": 100.0, "b": 0.01, "c": 1.0, "d": 0.0}  # ratios 0.1, 100, 0.5, 0
    assert rank_by_fisher_ratio(forget, retain, 1) == ["b"]
    assert rank_by_fisher_ratio(forget, retain, 3) == ["b", "c", "a"]


def test_fisher_diag_and_ranking_on_a_made_up_model():
    p1, p2 = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, 2))
    params = {"p1": p1, "p2": p2}
    f_forget = fisher_diag(params, lambda: 3 * p1.sum() + p2.sum(), 2)   # grads 3 and 1
    f_retain = fisher_diag(params, lambda: p1.sum() + 3 * p2.sum(), 2)   # grads 1 and 3
    assert f_forget == pytest.approx({"p1": 9.0, "p2": 1.0})
    assert f_retain == pytest.approx({"p1": 1.0, "p2": 9.0})
    assert rank_by_fisher_ratio(f_forget, f_retain, 1) == ["p1"]
    assert p1.grad is None and p2.grad is None


QUICK = {"forget_steps": 3, "remind_steps": 2, "fisher_batches": 2, "top_k": 4, "alpha_grid": [1.0]}


def test_subgroup_changes_only_the_chosen_tensors_and_is_deterministic(tiny_params):
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # same random init both times
        bundle = load_model("clip-ref-tiny", device="cpu")
        before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
        out = run(bundle, req, "subgroup", QUICK, data_root=tiny_params.data.root, seed=3,
                         log=lambda _: None)
        after = bundle.model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert out["info"]["alpha"] == 1.0 and len(out["info"]["layers"]) == 4
        assert changed and changed <= set(out["info"]["layers"])
        assert all(k.startswith("visual.") for k in changed)
        runs.append(after)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_subgroup_soup_at_alpha_zero_is_the_original(tiny_params):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    req = ForgetRequest(dataset="shapes", classes=["star"])  # a class request works too
    out = run(bundle, req, "subgroup", {**QUICK, "alpha_grid": [0.0]},
                     data_root=tiny_params.data.root, log=lambda _: None)
    assert out["info"]["alpha"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())


@pytest.mark.slow
def test_subgroup_meets_the_subgroup_targets_on_the_reference(reference_params):
    bundle = load_model(reference_params.model.dir)
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    out = run(bundle, req, "subgroup", data_root=reference_params.data.root, others=["shapes"],
              assurance=reference_params.assurance)   # the attacks' own images held out, as in the pipeline
    bf, af = out["before"], out["after"]
    assert bf["forget_top1"] > 0.5  # there was something to forget
    assert af["forget_top1"] <= 0.10, out
    assert bf["subgroup_rest_top1"] - af["subgroup_rest_top1"] <= 0.05, out
    assert bf["other_classes_top1"] - af["other_classes_top1"] <= 0.03, out
