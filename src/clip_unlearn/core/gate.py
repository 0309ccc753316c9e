"""The gate: the one set of limits a version must meet, and the one function that judges it.

    th = thresholds(params.gate, request.thresholds)            # ConfigError names a bad key or value
    checks = judge(before, after, th, subgroup=False, lineage=earlier, relearn_peak=0.31)
    passed(checks), failed_reasons(checks)
    res = assess(bundle, request, before, th, split="val", ...)  # measure `after` (+ relearning), then judge

`judge` is all there is to pass or fail: the benchmark's "met", `unlearn forget`, `auto`'s val gate
and verification (test split) call it with the same thresholds, so they cannot disagree. Fractions
in [0, 1]; a `*_drop_max` is the largest allowed fall in absolute points (before - after); None
switches a check off. A check is {"name", "rule", "value", "limit", "passed"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pydantic import Field

from clip_unlearn.core.assurance import AssuranceConfig, probe_check, relearn_check
from clip_unlearn.core.depth import METRICS as DEPTH_METRICS
from clip_unlearn.core.depth import measure_depth
from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.schema import Section, validate


class Thresholds(Section):
    # The project's targets. Never loosened to make a run pass; a request may set its own.
    forget_max: float | None = Field(0.05, ge=0, le=1, description="forgotten top-1 after must be <= this")
    subgroup_forget_max: float | None = Field(0.10, ge=0, le=1,
                                              description="subgroups: forgotten top-1 after must be <= this")
    forget_drop_min: float | None = Field(None, ge=0, le=1, description="forgotten top-1 must fall by >= this")
    retain_min: float | None = Field(None, ge=0, le=1, description="retained top-1 after must be >= this")
    retain_drop_max: float | None = Field(0.03, ge=0, le=1)
    other_min: float | None = Field(None, ge=0, le=1, description="mean top-1 on the other datasets")
    other_drop_max: float | None = Field(0.02, ge=0, le=1)
    subgroup_rest_drop_max: float | None = Field(0.05, ge=0, le=1, description="subgroups: the class's rest")
    other_classes_drop_max: float | None = Field(0.03, ge=0, le=1, description="subgroups: the other classes")
    # Half-way between "erased" and the base model (0.91 on the reference): the class does not come
    # back to a coin-flip after a short benign fine-tune (settings: params assurance:).
    relearn_forget_max: float | None = Field(
        0.5, ge=0, le=1, description="highest forgotten top-1 anywhere along a short fine-tune on retained data")
    # Depth (core/depth.py): what an attacker with the weights gets back, as recall of what was forgotten.
    # Calibrated from the retrain oracle's figures on the named benchmark requests (docs/methods.md): the
    # highest of digits:three/seven/nine and shapes:star on val, plus the 0.10 the benchmark's target
    # allows. Subgroups: no subgroup oracle was trained yet, so their depth is measured, not judged.
    depth_prototypes_max: float | None = Field(0.73, ge=0, le=1, description="class means of a few labelled images")
    depth_probe_max: float | None = Field(0.86, ge=0, le=1, description="a linear probe on image features")
    depth_relearn_max: float | None = Field(0.5, ge=0, le=1, description="a few-shot relearning attack")
    depth_paraphrase_max: float | None = Field(0.33, ge=0, le=1, description="zero-shot, paraphrased templates")
    subgroup_depth_prototypes_max: float | None = Field(None, ge=0, le=1)
    subgroup_depth_probe_max: float | None = Field(None, ge=0, le=1)
    subgroup_depth_relearn_max: float | None = Field(None, ge=0, le=1)
    subgroup_depth_paraphrase_max: float | None = Field(None, ge=0, le=1)

    def depth_limits(self, subgroup: bool) -> dict[str, float | None]:
        """metric -> limit (core/depth.py's names), for a class or a subgroup request."""
        pre = "subgroup_depth_" if subgroup else "depth_"
        return {m: getattr(self, f"{pre}{'relearn' if m == 'relearn_attack' else m}_max") for m in DEPTH_METRICS}


def thresholds(defaults: Thresholds, override: dict | None, source: str = "request.thresholds") -> Thresholds:
    return validate(Thresholds, {**defaults.model_dump(), **(override or {})}, source)


def forget_limit(th: Thresholds, subgroup: bool) -> float | None:
    """The forget top-1 limit an erasure is verified at (recorded in its lineage entry)."""
    return th.subgroup_forget_max if subgroup else th.forget_max


def _check(name: str, value: float, limit: float | None, upper: bool, rule: str) -> list[dict]:
    if limit is None or value is None or value != value:  # off, or nothing to measure (NaN: no other dataset)
        return []
    ok = value <= limit + 1e-12 if upper else value >= limit - 1e-12
    return [{"name": name, "rule": rule, "value": round(value, 4), "limit": limit, "passed": bool(ok)}]


def accuracy_checks(before: dict, after: dict, th: Thresholds, subgroup: bool) -> list[dict]:
    """Forget, retain and other-dataset top-1, absolute and relative to before."""
    forget_max = forget_limit(th, subgroup)
    checks = _check("forget_top1", after["forget_top1"], forget_max, True, f"after <= {forget_max}")
    checks += _check("forget_drop", before["forget_top1"] - after["forget_top1"], th.forget_drop_min, False,
                     f"before - after >= {th.forget_drop_min}")
    checks += _check("retain_top1", after["retain_top1"], th.retain_min, False, f"after >= {th.retain_min}")
    if subgroup:  # the targets of a subgroup: the class's rest and the other classes, not their mix
        checks += _check("subgroup_rest_drop", before["subgroup_rest_top1"] - after["subgroup_rest_top1"],
                         th.subgroup_rest_drop_max, True, f"before - after <= {th.subgroup_rest_drop_max}")
        checks += _check("other_classes_drop", before["other_classes_top1"] - after["other_classes_top1"],
                         th.other_classes_drop_max, True, f"before - after <= {th.other_classes_drop_max}")
    else:
        checks += _check("retain_drop", before["retain_top1"] - after["retain_top1"], th.retain_drop_max, True,
                         f"before - after <= {th.retain_drop_max}")
    if after.get("other"):
        checks += _check("other_top1", after["other_top1"], th.other_min, False, f"after >= {th.other_min}")
        checks += _check("other_drop", before["other_top1"] - after["other_top1"], th.other_drop_max, True,
                         f"before - after <= {th.other_drop_max}")
    return checks


def lineage_checks(measured: dict[str, float], lineage: Sequence[Earlier]) -> list[dict]:
    """Each earlier erasure of the lineage, re-measured on the new version (measured[forgotten], as
    request_metrics' "lineage"), against its own limit."""
    checks = []
    for e in lineage:
        value = measured.get(e.forgotten)
        checks += _check(f"lineage:{e.request_id}", value, e.limit, True,
                         f"earlier erasure {e.request_id} ({e.forgotten}, v{e.version}) stays forgotten: "
                         f"top-1 <= {e.limit}")
    return checks


def relearn_checks(peak: float | None, th: Thresholds) -> list[dict]:
    return _check("relearn_forget_top1", peak, th.relearn_forget_max, True, f"max <= {th.relearn_forget_max}")


def depth_checks(depth: dict | None, th: Thresholds, subgroup: bool) -> list[dict]:
    """Each measured depth figure (recall of what was forgotten) against its limit: depth_<metric>."""
    checks = []
    for metric, limit in th.depth_limits(subgroup).items():
        checks += _check(f"depth_{metric}", (depth or {}).get(metric), limit, True,
                         f"recall <= {limit}: {DEPTH_WORDS[metric]}")
    return checks


DEPTH_WORDS = {  # what a failed depth check means, in words (the job's reasons, the registry's tags)
    "prototypes": "with a few labelled images per class (class means of image features), at most that share "
                  "of what was forgotten is recognised",
    "probe": "a linear probe on image features recognises at most that share of what was forgotten",
    "relearn_attack": "after a short fine-tune on a few labelled images of it, at most that share is recognised",
    "paraphrase": "zero-shot with paraphrased templates recognises at most that share of it"}


def judge(before: dict, after: dict, th: Thresholds, subgroup: bool, lineage: Sequence[Earlier] = (),
          relearn_peak: float | None = None, depth: dict | None = None) -> list[dict]:
    """Every check of a before/after: accuracy, each earlier erasure, the relearning peak and the depth
    figures (those measured)."""
    return (accuracy_checks(before, after, th, subgroup) + lineage_checks(after.get("lineage", {}), lineage)
            + relearn_checks(relearn_peak, th) + depth_checks(depth, th, subgroup))


def passed(checks: list[dict]) -> bool:
    return all(c["passed"] for c in checks)


def failed_reasons(checks: list[dict]) -> list[str]:
    return [f"{c['name']} = {c['value']} violates {c['rule']}" for c in checks if not c["passed"]]


def excess(checks: list[dict]) -> float:
    """How far the failed checks are from passing: the sum of |value - limit| / limit (limits under 0.01
    count as 0.01), so that a miss of 0.01 on a 0.02 limit weighs as much as 0.25 on a 0.5 one."""
    return sum(abs(c["value"] - c["limit"]) / max(abs(c["limit"]), 0.01) for c in checks if not c["passed"])


def assess(bundle: ClipBundle, request: ForgetRequest, before: dict, th: Thresholds, *, data_root: str,
           others: Sequence[str] = (), split: str = "test", lineage: Sequence[Earlier] = (),
           assurance: AssuranceConfig | None = None, after: dict | None = None, measure_all: bool = False,
           depth_always: bool = False, figure_path: str | Path | None = None, base: ClipBundle | None = None) -> dict:
    """Measure `bundle` on `split` and judge it: {"after", "checks", "relearn", "depth", "probe", "passed"}.

    Cheapest first, each stage only once the checks before it pass: accuracy and lineage, the cheap
    depth attacks (prototypes, probe, paraphrase), the relearning check, the relearning attack
    (settings: assurance). `measure_all` runs every stage (verification records every figure),
    `depth_always` every depth attack (the benchmark's depth columns); `after` may pass metrics already
    measured on this split. With assurance.probe_gate the linear probe against `base` is a check too."""
    earlier = [e.request for e in lineage]
    after = after or request_metrics(bundle, request, data_root, list(others), split=split, lineage=earlier)
    checks = judge(before, after, th, request.is_subgroup, lineage)
    on = assurance is not None and assurance.enabled
    limits = th.depth_limits(request.is_subgroup)
    depth_on = on and assurance.depth.enabled and (depth_always or measure_all
                                                   or any(v is not None for v in limits.values()))
    relearn, depth = None, ({} if depth_on else None)

    def run_depth(metrics: tuple[str, ...]) -> None:
        wanted = tuple(m for m in metrics if limits[m] is not None or measure_all or depth_always)
        if depth_on and wanted and (measure_all or depth_always or passed(checks)):
            got = measure_depth(bundle, request, data_root, assurance.depth, split, earlier, wanted)
            depth.update({m: got[m] for m in wanted}, split=split, n_forget=got["n_forget"],
                         seconds={**depth.get("seconds", {}), **got["seconds"]})
            checks.extend(depth_checks({m: got[m] for m in wanted}, th, request.is_subgroup))

    run_depth(("prototypes", "probe", "paraphrase"))
    if on and assurance.relearn_steps and (measure_all or passed(checks)):
        relearn = relearn_check(bundle, request, data_root, assurance, figure_path, earlier, split=split,
                                limit=th.relearn_forget_max)
        checks += relearn_checks(relearn["forget_top1_max"], th)
    run_depth(("relearn_attack",))
    probe = None
    if on and assurance.probe_gate and (measure_all or passed(checks)):
        if base is None:
            raise ValueError("assurance.probe_gate is on: the gate needs the base model for the probe")
        probe = probe_check(base, bundle, request, data_root, assurance, lineage=earlier)
        checks.append({"name": "probe", "rule": "forgotten images no more separable than allowed",
                       "value": round(probe["new_balanced_accuracy"], 4), "limit": None, "passed": probe["passed"]})
    return {"after": after, "checks": checks, "relearn": relearn, "depth": depth, "probe": probe,
            "passed": passed(checks)}
