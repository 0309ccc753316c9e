"""auto: data-free methods first, real-data ones last and only if allowed, every attempt recorded."""

from __future__ import annotations

import pytest
import torch
from conftest import DEPTH_OFF, run

from clip_unlearn.core.gate import Thresholds, excess
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.methods import get_method
from clip_unlearn.methods.auto import AutoConfig

SEVEN = ForgetRequest(dataset="digits", classes=["seven"])
QUICK = {"subgroup": {"fisher_batches": 1, "forget_steps": 1, "remind_steps": 2, "remind_batch_size": 8,
                      "alpha_grid": [1.0]}}
IMPOSSIBLE = {"forget_max": 0.0, "forget_drop_min": 1.0}   # no attempt passes: every one is tried


def _configs():
    return {n: get_method(n).config_cls.model_validate(c) for n, c in QUICK.items()}


def _auto(tiny_params, cfg: dict, request=SEVEN, thresholds=IMPOSSIBLE):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    return run(bundle, request, "auto", cfg, tiny_params.data.root, ["shapes"], configs=_configs(),
               gate=Thresholds(**thresholds))


def test_data_free_methods_run_first_and_real_data_last(tiny_params):
    res = _auto(tiny_params, {"order": ["subgroup", "projection", "text_edit"]})
    tried = [(a["method"], a["data_free"]) for a in res["info"]["attempts"]]
    assert tried == [("projection", True), ("text_edit", True), ("subgroup", False)]
    assert all(not a["passed_val"] and a["failed"] and "forget_top1" in a["val"] for a in res["info"]["attempts"])


def test_real_data_methods_are_skipped_unless_allowed(tiny_params):
    res = _auto(tiny_params, {"order": ["projection", "subgroup"], "allow_forgotten_data": False})
    attempts = {a["method"]: a for a in res["info"]["attempts"]}
    assert "not allowed" in attempts["subgroup"]["skipped"] and "passed_val" not in attempts["subgroup"]
    assert res["info"]["chosen"] == "projection" and res["data_free"] is True


def test_the_first_method_that_passes_on_val_is_kept(tiny_params):
    lenient = {k: None for k in ("forget_max", "retain_drop_max", "other_drop_max")} | DEPTH_OFF
    res = _auto(tiny_params, {"order": ["text_edit", "projection", "subgroup"]}, thresholds=lenient)
    assert [a["method"] for a in res["info"]["attempts"]] == ["text_edit"]
    assert res["info"]["chosen"] == "text_edit" and res["info"]["passed_val"] and res["data_free"]


def test_subgroups_use_the_subgroup_order(tiny_params):
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    res = _auto(tiny_params, {"subgroup_order": ["text_edit", "subgroup"]}, request=req)
    attempts = {a["method"]: a for a in res["info"]["attempts"]}
    assert "subgroup" in attempts["text_edit"]["skipped"] and res["info"]["chosen"] == "subgroup"


def test_auto_cannot_try_itself_or_the_oracle():
    for bad in ("auto", "oracle", "nope"):
        with pytest.raises(Exception, match="auto cannot try|unknown method"):
            AutoConfig(order=[bad])


def test_text_edit_refuses_a_subgroup_with_a_reason(tiny_params):
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    bundle = load_model("clip-ref-tiny", device="cpu")
    with pytest.raises(ConfigError, match="image-side method"):
        run(bundle, req, "text_edit", None, tiny_params.data.root, log=lambda _: None)


def test_excess_weighs_each_miss_by_its_limit():
    checks = [{"value": 0.03, "limit": 0.02, "passed": False}, {"value": 0.75, "limit": 0.5, "passed": False},
              {"value": 0.9, "limit": 0.1, "passed": True}]
    assert excess(checks) == pytest.approx(0.5 + 0.5)
    assert excess([{"value": 0.004, "limit": 0.0, "passed": False}]) == pytest.approx(0.4)  # limit 0 counts as 0.01


def test_when_nothing_passes_the_attempt_closest_to_passing_is_kept(tiny_params):
    res = _auto(tiny_params, {"order": ["projection", "text_edit", "subgroup"]})
    attempts = res["info"]["attempts"]
    closest = min(attempts, key=lambda a: (len(a["failed"]), a["excess"], a["val"]["forget_top1"]))
    assert res["info"]["chosen"] == closest["method"] and not res["info"]["passed_val"]
    assert all(a["excess"] > 0 for a in attempts)
