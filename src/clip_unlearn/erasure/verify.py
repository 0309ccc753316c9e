"""Verification of an erasure: thresholds on forget, retain and other-dataset accuracy, absolute
and relative to before (BF). params.yaml `verify:` holds the defaults; a request may tighten or
loosen any of them.

    th = thresholds(params.verify, request.thresholds)      # ConfigError names a bad key or value
    checks = run_checks(before, after, th, subgroup=False)  # [{"name", "rule", "value", "limit", "passed"}]
    checks += lineage_checks(after, lineage)                # each earlier erasure still within its limit

Fractions in [0, 1]; a `*_drop_max` is the largest allowed fall in absolute points (BF - AF);
None switches a check off.
"""

from __future__ import annotations

from pydantic import Field

from clip_unlearn.schema import Section, validate

class Thresholds(Section):
    # Defaults = the project's targets (params.yaml targets:). Never loosened to make a run pass.
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
    relearn_forget_max: float | None = Field(
        None, ge=0, le=1, description="assurance: forgotten top-1 after a fine-tune on retained data "
                                      "(None: the assurance section's value)")

def thresholds(defaults: Thresholds, override: dict | None, source: str = "request.thresholds") -> Thresholds:
    return validate(Thresholds, {**defaults.model_dump(), **(override or {})}, source)

def run_checks(before: dict, after: dict, th: Thresholds, subgroup: bool) -> list[dict]:
    checks = []

    def check(name: str, value: float, limit: float | None, upper: bool, rule: str) -> None:
        if limit is None or value != value:  # off, or nothing to measure (NaN: no other dataset)
            return
        ok = value <= limit + 1e-12 if upper else value >= limit - 1e-12
        checks.append({"name": name, "rule": rule, "value": round(value, 4), "limit": limit, "passed": bool(ok)})

    forget_max = th.subgroup_forget_max if subgroup else th.forget_max
    check("forget_top1", after["forget_top1"], forget_max, True, f"after <= {forget_max}")
    check("forget_drop", before["forget_top1"] - after["forget_top1"], th.forget_drop_min, False,
          f"before - after >= {th.forget_drop_min}")
    check("retain_top1", after["retain_top1"], th.retain_min, False, f"after >= {th.retain_min}")
    if subgroup:  # the targets of a subgroup: the class's rest and the other classes, not their mix
        check("subgroup_rest_drop", before["subgroup_rest_top1"] - after["subgroup_rest_top1"],
              th.subgroup_rest_drop_max, True, f"before - after <= {th.subgroup_rest_drop_max}")
        check("other_classes_drop", before["other_classes_top1"] - after["other_classes_top1"],
              th.other_classes_drop_max, True, f"before - after <= {th.other_classes_drop_max}")
    else:
        check("retain_drop", before["retain_top1"] - after["retain_top1"], th.retain_drop_max, True,
              f"before - after <= {th.retain_drop_max}")
    if after.get("other"):
        check("other_top1", after["other_top1"], th.other_min, False, f"after >= {th.other_min}")
        check("other_drop", before["other_top1"] - after["other_top1"], th.other_drop_max, True,
              f"before - after <= {th.other_drop_max}")
    return checks

def forget_limit(th: Thresholds, subgroup: bool) -> float | None:
    """The forget top-1 limit an erasure is verified at (recorded in its lineage entry)."""
    return th.subgroup_forget_max if subgroup else th.forget_max


def lineage_checks(after: dict, lineage: list[dict]) -> list[dict]:
    """Each earlier erasure of the lineage ({"request_id", "forgotten", "limit", "version"}),
    re-measured on the new version (after["lineage"][forgotten]) against its own limit."""
    checks = []
    for e in lineage:
        value = after.get("lineage", {}).get(e["forgotten"])
        if e.get("limit") is None or value is None or value != value:
            continue
        checks.append({"name": f"lineage:{e['request_id']}", "value": round(value, 4), "limit": e["limit"],
                       "rule": f"earlier erasure {e['request_id']} ({e['forgotten']}, v{e.get('version')}) "
                               f"stays forgotten: top-1 <= {e['limit']}",
                       "passed": bool(value <= e["limit"] + 1e-12)})
    return checks


def failed_reasons(checks: list[dict]) -> list[str]:
    return [f"{c['name']} = {c['value']} violates {c['rule']}" for c in checks if not c["passed"]]
