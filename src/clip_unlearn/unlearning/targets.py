"""Acceptance targets for a forget run, from BF/AF metrics (fractions, drops in absolute points).

    check_targets(result, TargetsConfig())  ->  {"forget": True, "retain": False, ...}
"""

from __future__ import annotations

from pydantic import Field

from clip_unlearn.schema import Section


class ClassTargets(Section):
    forget_max: float = Field(0.05, ge=0, le=1)
    retain_drop_max: float = Field(0.03, ge=0, le=1)
    other_drop_max: float = Field(0.02, ge=0, le=1)


class SubgroupTargets(Section):
    forget_max: float = Field(0.10, ge=0, le=1)
    rest_drop_max: float = Field(0.05, ge=0, le=1, description="the class's other subgroups")
    other_classes_drop_max: float = Field(0.03, ge=0, le=1)
    other_drop_max: float = Field(0.02, ge=0, le=1, description="other datasets")


class TargetsConfig(Section):
    classes: ClassTargets = ClassTargets()
    subgroups: SubgroupTargets = SubgroupTargets()


def check_targets(before: dict, after: dict, targets: TargetsConfig, subgroup: bool) -> dict[str, bool]:
    def drop(key: str) -> float:
        return before[key] - after[key]

    if subgroup:
        t = targets.subgroups
        checks = {"forget": after["forget_top1"] <= t.forget_max,
                  "subgroup_rest": drop("subgroup_rest_top1") <= t.rest_drop_max,
                  "other_classes": drop("other_classes_top1") <= t.other_classes_drop_max}
    else:
        t = targets.classes
        checks = {"forget": after["forget_top1"] <= t.forget_max,
                  "retain": drop("retain_top1") <= t.retain_drop_max}
    if after.get("other"):
        checks["other"] = drop("other_top1") <= t.other_drop_max
    return checks
