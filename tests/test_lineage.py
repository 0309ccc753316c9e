"""Lineage: what a model forgot earlier is never read again, and is re-checked on every new version."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ATTACKS
from conftest import image_paths as _paths

from clip_unlearn.core.gate import Thresholds, failed_reasons, judge
from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.splits import cached_split
from clip_unlearn.methods import METHODS, UnlearnContext, get_method
from clip_unlearn.methods.context import freeze_copy

EARLIER = [ForgetRequest(dataset="digits", classes=["seven"]),
           ForgetRequest(dataset="shapes", classes=["star"], where={"colour": "blue"})]
EARLIER_ENTRIES = [Earlier(request_id=f"e{i}", forgotten=r.describe(), limit=0.05, version=str(i + 2))
                   for i, r in enumerate(EARLIER)]
NOW = ForgetRequest(dataset="digits", classes=["three"])
NOW_SUBGROUP = ForgetRequest(dataset="digits", classes=["three"], where={"ink": "red"})  # for subgroup-only methods
SUBGROUP_ONLY = {"attribute_edit", "standin_subgroup"}
# Each method shrunk to a few steps: what is checked is which images it reads, not how well it forgets.
QUICK = {"gradient_ascent": {"steps": 2, "batch_size": 8}, "random_labels": {"steps": 2, "batch_size": 8},
         "subgroup": {"fisher_batches": 1, "forget_steps": 1, "remind_steps": 2, "remind_batch_size": 8,
                      "alpha_grid": [0.5, 1.0]},
         "standin_subgroup": {"forget_steps": 1, "remind_steps": 2, "remind_batch_size": 8, "forget_batch_size": 4,
                              "other_batch_size": 4, "alpha_grid": [0.5, 1.0]},
         "oracle": {"steps": 1, "datasets": ["digits", "shapes"]}, "partial_retrain": {"steps": 2, "batch": 16},
         "auto": {"order": ["projection", "subgroup"]}}  # a random model: make it reach a real-data method


@pytest.mark.parametrize("text", ["digits:seven", "digits:seven+three[ink=red]", "shapes:star[background=white,colour=blue]",
                                  "cifar10:/data/cifar:cat"])
def test_describe_and_parse_round_trip(text):
    assert ForgetRequest.parse(text).describe() == text


@pytest.mark.parametrize("name", sorted(m for m in METHODS if m != "auto") + ["auto"])
def test_no_method_reads_what_the_lineage_forgot(name, tiny_params, reads, tmp_path):
    """Methods get data only through the context: the lineage's items (and, for data-free methods,
    the request's own) are never decoded, in any split."""
    root = tiny_params.data.root
    m = get_method(name)
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    cfg = m.config_cls.model_validate(QUICK.get(name, {}))
    now = NOW_SUBGROUP if name in SUBGROUP_ONLY else NOW
    ctx = UnlearnContext(now, root, data_free=m.data_free, lineage=EARLIER_ENTRIES, others=["shapes"],
                         log=lambda _: None, gate=Thresholds(forget_max=0.0, forget_drop_min=1.0), assurance=TINY_ATTACKS,
                         configs={n: get_method(n).config_cls.model_validate(c) for n, c in QUICK.items()})
    ctx.original = freeze_copy(bundle)
    # Measuring is not training: the full val/test splits that evaluation (auto's val gate, like
    # verification on test) scores are decoded before recording; ctx's own sets are separate objects.
    for spec in ("digits", "shapes"):
        for split in ("val", "test"):
            cached_split(spec, split, root).tensors()
    reads.clear()
    if hasattr(cfg, "synthesis"):  # a tiny synthetic set, as the pipeline would pass in
        ctx.synthetic = lambda: (torch.randn(4, 3, 32, 32), torch.full((4,), ctx.forget_labels[0]))
    m.fn(bundle, ctx, cfg)
    forbidden = _paths(root, EARLIER + ([now] if m.data_free else []))
    read = set(reads)
    assert read or m.data_free, "the check is void: the method read no image at all"
    assert not read & forbidden, f"{name} read {len(read & forbidden)} images it must never see"


def test_retain_figures_leave_out_the_lineage(tiny_params):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    root = tiny_params.data.root
    plain = request_metrics(bundle, NOW, root, ["shapes"], split="val")
    with_lineage = request_metrics(bundle, NOW, root, ["shapes"], split="val", lineage=EARLIER)
    ds = cached_split("digits", "val", root)
    n_seven = int(EARLIER[0].covers(ds).sum())
    assert n_seven > 0 and with_lineage["n_retain"] == plain["n_retain"] - n_seven
    assert set(with_lineage["lineage"]) == {"digits:seven", "shapes:star[colour=blue]"}
    assert all(0.0 <= v <= 1.0 for v in with_lineage["lineage"].values())
    assert with_lineage["lineage"]["digits:seven"] == pytest.approx(plain["per_class"]["seven"])


def test_a_regressed_earlier_erasure_fails_and_is_named():
    lineage = [Earlier(request_id="gdpr-1", forgotten="digits:seven", limit=0.05, version="2"),
               Earlier(request_id="take-2", forgotten="shapes:star", limit=0.05, version=3)]
    after = {"forget_top1": 0.0, "retain_top1": 0.9, "other": {}, "lineage": {"digits:seven": 0.255,
                                                                               "shapes:star": 0.01}}
    checks = judge({"forget_top1": 0.9, "retain_top1": 0.9}, after, Thresholds(), False, lineage)
    reasons = failed_reasons(checks)
    assert len(reasons) == 1 and "gdpr-1" in reasons[0] and "digits:seven" in reasons[0] and "v2" in reasons[0]


def test_params_gate_is_the_strict_default(repo_params):
    assert repo_params.gate == Thresholds()


@pytest.mark.slow
def test_auto_erases_data_free_and_a_second_erasure_keeps_the_first(reference_params):
    """The Quickstart's request and a second one on top, on the trained reference (test split):
    both meet every target with a data-free method, and seven stays forgotten on the second version."""
    from clip_unlearn.pipeline.unlearn import judge as gate
    from clip_unlearn.pipeline.unlearn import unlearn

    p = reference_params
    bundle = load_model(p.model.dir, device="cpu")
    seven, three = ForgetRequest(dataset="digits", classes=["seven"]), ForgetRequest(dataset="digits", classes=["three"])
    lineage = [Earlier(request_id="first", forgotten=seven.describe(), limit=p.gate.forget_max, version="2")]
    first = unlearn(p, bundle, seven, "auto", log=lambda _: None)
    judged = [gate(p, bundle, first)]
    second = unlearn(p, bundle, three, "auto", lineage=lineage, log=lambda _: None)
    judged.append(gate(p, bundle, second, lineage=lineage))
    for res, verdict in zip((first, second), judged):
        assert res["data_free"] and res["before"]["forget_top1"] > 0.5
        assert verdict["passed"], failed_reasons(verdict["checks"])
    assert second["after"]["lineage"]["digits:seven"] <= p.gate.forget_max
    assert second["after"]["n_retain"] < first["after"]["n_retain"]   # sevens are no longer "retained"
