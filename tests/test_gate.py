"""The one gate: the checks, and the benchmark's "met" and verification's "passed" as one verdict."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import LENIENT

from clip_unlearn.core.gate import Thresholds, accuracy_checks, excess, judge, passed, thresholds
from clip_unlearn.core.models import load_model, save_model
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.pipeline import steps
from clip_unlearn.pipeline.benchmark import _run
from clip_unlearn.pipeline.benchmark_report import row
from clip_unlearn.pipeline.job import Job, write_json

BEFORE = {"forget_top1": 0.98, "retain_top1": 0.97, "other_top1": 0.95, "other": {"x": 0.95}}
GOOD = {"forget_top1": 0.01, "retain_top1": 0.95, "other_top1": 0.94, "other": {"x": 0.94}}


def test_accuracy_checks_follow_the_limits():
    checks = {c["name"]: c["passed"] for c in accuracy_checks(BEFORE, GOOD, Thresholds(), subgroup=False)}
    assert checks == {"forget_top1": True, "retain_drop": True, "other_drop": True}
    bad = GOOD | {"retain_top1": 0.93, "other_top1": 0.92}
    checks = {c["name"]: c["passed"] for c in accuracy_checks(BEFORE, bad, Thresholds(), subgroup=False)}
    assert checks == {"forget_top1": True, "retain_drop": False, "other_drop": False}


def test_judge_adds_each_earlier_erasure_and_the_relearning_peak():
    after = GOOD | {"lineage": {"digits:seven": 0.2}}
    lineage = [Earlier(request_id="gdpr-1", forgotten="digits:seven", limit=0.05, version=2)]
    checks = judge(BEFORE, after, Thresholds(), False, lineage, relearn_peak=0.51)
    failed = {c["name"] for c in checks if not c["passed"]}
    assert failed == {"lineage:gdpr-1", "relearn_forget_top1"} and not passed(checks)
    assert excess(checks) == pytest.approx((0.2 - 0.05) / 0.05 + 0.01 / 0.5)
    off = thresholds(Thresholds(), {"relearn_forget_max": None})
    assert "relearn_forget_top1" not in {c["name"] for c in judge(BEFORE, after, off, False, relearn_peak=0.9)}


def test_a_bad_override_names_the_key():
    with pytest.raises(ConfigError, match="forget_maks: unknown key"):
        thresholds(Thresholds(), {"forget_maks": 0.1})


@pytest.mark.parametrize("gate", ["impossible", "lenient"])
def test_benchmark_met_and_verification_passed_cannot_disagree(gate, tiny_params, tiny_model_dir, tmp_path):
    """The same model and request, judged by the benchmark's row and by the erasure job's verify step."""
    limits = {"lenient": LENIENT,
              "impossible": {"forget_max": 0.0, "forget_drop_min": 0.99}}[gate]
    p = tiny_params.model_copy(update={
        "gate": tiny_params.gate.model_copy(update=limits),
        "assurance": tiny_params.assurance.model_copy(update={"relearn_steps": 2, "relearn_batch_size": 8,
                                                              "relearn_eval_every": 1, "probe_max_iter": 5}),
        "erase": tiny_params.erase.model_copy(update={"workdir": str(tmp_path / "runs")})})
    torch.manual_seed(0)
    request = ForgetRequest(dataset="digits", classes=["seven"])
    bundle, result, judged = _run(p, load_model(tiny_model_dir, device="cpu"), request, "projection", lambda _: None)
    met = row(result, judged["checks"])["targets_met"]

    job = Job.create(p, p.default_request().model_copy(update={"method": "projection"}))
    save_model(bundle, job.dir / "model")
    write_json(job.dir / "result.json", result)
    verification = steps.verify(job, tiny_model_dir, str(job.dir / "model"), str(job.dir / "result.json"))
    assert met == (verification["verdict"] == "passed") == (gate == "lenient")
    if gate == "lenient":   # everything ran in both: the very same checks and figures
        assert json.loads(json.dumps(judged["checks"])) == verification["checks"]
