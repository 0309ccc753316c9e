"""Lineage: what a model forgot earlier is never read again, and is re-checked on every new version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_unlearn.data import datasets as dsmod
from clip_unlearn.erasure.verify import Thresholds, failed_reasons, lineage_checks, run_checks
from clip_unlearn.models import load_model
from clip_unlearn.unlearning import ForgetRequest, run_method
from clip_unlearn.unlearning.context import UnlearnContext, cached_split, retained_split
from clip_unlearn.unlearning.evaluate import request_metrics
from clip_unlearn.unlearning.registry import METHODS, get_method

EARLIER = [ForgetRequest(dataset="digits", classes=["seven"]),
           ForgetRequest(dataset="shapes", classes=["star"], where={"colour": "blue"})]
NOW = ForgetRequest(dataset="digits", classes=["three"])
NOW_SUBGROUP = ForgetRequest(dataset="digits", classes=["three"], where={"ink": "red"})  # for subgroup-only methods
SUBGROUP_ONLY = {"attribute_edit", "standin_subgroup"}
# Each method shrunk to a few steps: what is checked is which images it reads, not how well it forgets.
QUICK = {"gradient_ascent": {"steps": 2, "batch_size": 8}, "random_labels": {"steps": 2, "batch_size": 8},
         "subgroup": {"fisher_batches": 1, "forget_steps": 1, "remind_steps": 2, "remind_batch_size": 8,
                      "alpha_grid": [0.5, 1.0]},
         "standin_subgroup": {"forget_steps": 1, "remind_steps": 2, "remind_batch_size": 8, "forget_batch_size": 4,
                              "other_batch_size": 4, "alpha_grid": [0.5, 1.0]},
         "oracle": {"steps": 1, "datasets": ["digits", "shapes"]},
         "auto": {"order": ["projection", "subgroup"]}}  # a random model: make it reach a real-data method


@pytest.mark.parametrize("text", ["digits:seven", "digits:seven+three[ink=red]", "shapes:star[background=white,colour=blue]",
                                  "cifar10:/data/cifar:cat"])
def test_describe_and_parse_round_trip(text):
    assert ForgetRequest.parse(text).describe() == text


def _paths(root: str, requests: list[ForgetRequest]) -> set[str]:
    """Image paths of every split that the requests name."""
    out = set()
    for req in requests:
        for split in ("train", "val", "test"):
            ds = cached_split(req.dataset, split, root)
            out |= {ds._load.paths[j] for j in ds._indices[req.covers(ds)]}
    return out


@pytest.fixture
def reads(monkeypatch):
    """Every image path decoded while the fixture is active (caches cleared first)."""
    seen: list[str] = []
    cached_split.cache_clear()
    retained_split.cache_clear()
    original = dsmod._FileLoader.__call__

    def record(self, j):
        seen.append(self.paths[j])
        return original(self, j)

    monkeypatch.setattr(dsmod._FileLoader, "__call__", record)
    yield seen
    cached_split.cache_clear()
    retained_split.cache_clear()


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
    ctx = UnlearnContext(now, root, data_free=m.data_free, lineage=EARLIER, others=["shapes"],
                         log=lambda _: None, thresholds={"forget_max": 0.0, "forget_drop_min": 1.0},
                         configs={n: get_method(n).config_cls.model_validate(c) for n, c in QUICK.items()})
    from clip_unlearn.unlearning.context import freeze_copy

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
    lineage = [{"request_id": "gdpr-1", "forgotten": "digits:seven", "limit": 0.05, "version": "2"},
               {"request_id": "take-2", "forgotten": "shapes:star", "limit": 0.05, "version": "3"}]
    after = {"forget_top1": 0.0, "retain_top1": 0.9, "other": {}, "lineage": {"digits:seven": 0.255,
                                                                               "shapes:star": 0.01}}
    checks = run_checks({"forget_top1": 0.9, "retain_top1": 0.9}, after, Thresholds(), False)
    checks += lineage_checks(after, lineage)
    reasons = failed_reasons(checks)
    assert len(reasons) == 1 and "gdpr-1" in reasons[0] and "digits:seven" in reasons[0] and "v2" in reasons[0]


def test_strict_gate_defaults_equal_the_targets(repo_params):
    from clip_unlearn.unlearning.targets import TargetsConfig

    t, v = TargetsConfig(), repo_params.verify
    assert (v.forget_max, v.retain_drop_max, v.other_drop_max) == \
        (t.classes.forget_max, t.classes.retain_drop_max, t.classes.other_drop_max)
    assert (v.subgroup_forget_max, v.subgroup_rest_drop_max, v.other_classes_drop_max) == \
        (t.subgroups.forget_max, t.subgroups.rest_drop_max, t.subgroups.other_classes_drop_max)
    assert Thresholds() == v


@pytest.mark.slow
def test_auto_erases_data_free_and_a_second_erasure_keeps_the_first(reference_params):
    """The Quickstart's request and a second one on top, on the trained reference (test split):
    both meet every target with a data-free method, and seven stays forgotten on the second version."""
    from clip_unlearn.unlearning.targets import check_targets

    p = reference_params
    kw = dict(data_root=p.data.root, others=["shapes"], log=lambda _: None, configs=p.methods,
              thresholds=p.verify.model_dump(), assurance=p.assurance)
    bundle = load_model(p.model.dir, device="cpu")
    seven, three = ForgetRequest(dataset="digits", classes=["seven"]), ForgetRequest(dataset="digits", classes=["three"])
    first = run_method(bundle, seven, "auto", p.methods["auto"], **kw)
    second = run_method(bundle, three, "auto", p.methods["auto"], lineage=[seven],
                        lineage_limits={"digits:seven": p.verify.forget_max}, **kw)
    for res in (first, second):
        assert res["data_free"] and res["before"]["forget_top1"] > 0.5
        assert all(check_targets(res["before"], res["after"], p.targets, False).values()), res["after"]
    assert second["after"]["lineage"]["digits:seven"] <= p.verify.forget_max
    assert second["after"]["n_retain"] < first["after"]["n_retain"]   # sevens are no longer "retained"
