"""`auto`: the cheapest method that passes the gate on the val split, data-free methods first.

    res = run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "auto",
                     data_root="data", others=["shapes"], configs=params.methods)
    res["info"]["chosen"], res["info"]["data_free"], res["info"]["attempts"]

Each method of `order` that applies runs on a fresh copy of the original weights, under its own
data guard (a data-free method gets a context that refuses real images of what is forgotten).
Its result is judged on the VAL split by the one gate verification applies on test (core/gate.py:
ctx.gate, params `gate:` plus the request's overrides): accuracy, every earlier erasure of the
lineage, then (once those pass) depth and the relearning check, cheapest first. Measuring reads the val split, as
verification reads test; no method trains on it. The first that passes is kept; methods that read real images of what is forgotten
run only after every data-free one failed, and only if `allow_forgotten_data`. If none passes, the
attempt closest to passing is kept: fewest failed checks, then the smallest summed excess over their
limits (relative to each limit), then the lowest forget top-1 (verification on test then fails it,
with figures).
"""

from __future__ import annotations

import copy
import dataclasses
import time

from pydantic import Field, field_validator

from clip_unlearn.core.gate import assess, excess, failed_reasons
from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.schema import Section
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import get_method, register


class AutoConfig(Section):
    # Cheapest first: a closed-form text edit (seconds), a closed-form image projection, the image
    # tower's last blocks retrained without the class (minutes), the synthetic-sample method, then the
    # real-data subgroup method.
    order: list[str] = Field(default_factory=lambda: ["text_edit", "projection", "partial_retrain", "lipschitz", "subgroup"],
                             min_length=1, description="methods tried, in this order (data-free ones run first)")
    subgroup_order: list[str] = Field(default_factory=lambda: ["attribute_edit", "standin_subgroup", "subgroup"], min_length=1,
                                      description="methods tried for a subgroup request (class-level ones "
                                                  "cannot keep the rest of the class)")
    allow_forgotten_data: bool = Field(
        True, description="whether methods that read real images of what is forgotten may run (last)")

    @field_validator("order", "subgroup_order")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in ("auto", "oracle"):
                raise ValueError(f"auto cannot try {name!r}")
            get_method(name)
        return v


def _val_metrics(bundle: ClipBundle, ctx: UnlearnContext) -> dict:
    return request_metrics(bundle, ctx.request, ctx.data_root, ctx.others, split="val", lineage=ctx.earlier)


def _short(m: dict) -> dict:
    keys = ("forget_top1", "retain_top1", "other_top1", "subgroup_rest_top1", "other_classes_top1", "relearn_max")
    return {k: round(m[k], 4) for k in keys if m.get(k) is not None and m[k] == m[k]} | \
        {"lineage": {k: round(v, 4) for k, v in m.get("lineage", {}).items()}}


@register("auto", AutoConfig, data_free=False)
def auto(bundle: ClipBundle, ctx: UnlearnContext, cfg: AutoConfig) -> dict:
    """Cheapest data-free method that passes the gate on val; real-data methods last, if allowed."""
    original = copy.deepcopy(ctx.original.model.state_dict())
    methods = [get_method(n) for n in (cfg.subgroup_order if ctx.request.where else cfg.order)]
    methods.sort(key=lambda m: not m.data_free)  # stable: data-free ones first, in the given order
    before = _val_metrics(ctx.original, ctx)
    attempts, states = [], []
    for m in methods:
        row = {"method": m.name, "data_free": m.data_free}
        if not m.data_free and not cfg.allow_forgotten_data:
            attempts.append(row | {"skipped": "reads real images of what is forgotten; not allowed"})
            continue
        bundle.model.load_state_dict(original)
        sub = dataclasses.replace(ctx, data_free=m.data_free)
        t0 = time.perf_counter()
        try:
            info = m.fn(bundle, sub, ctx.configs.get(m.name) or m.config_cls()) or {}
        except ValueError as e:  # does not apply to this request (e.g. text_edit on a subgroup)
            attempts.append(row | {"skipped": str(e)})
            continue
        seconds = time.perf_counter() - t0
        bundle.model.eval()
        judged = assess(bundle, ctx.request, before, ctx.gate, data_root=ctx.data_root, others=ctx.others,
                        split="val", lineage=ctx.lineage, assurance=ctx.assurance)
        after, checks = judged["after"], judged["checks"]
        if judged["relearn"]:
            after["relearn_max"] = judged["relearn"]["forget_top1_max"]
        failed = failed_reasons(checks)
        attempts.append(row | {"passed_val": not failed, "failed": failed, "excess": round(excess(checks), 4),
                               "val": _short(after), "seconds": round(seconds, 3), "info": info})
        states.append((len(failed), attempts[-1]["excess"], after["forget_top1"], len(attempts) - 1,
                       {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}))
        ctx.log(f"auto: {m.name} on val: {'passed' if not failed else 'failed: ' + '; '.join(failed)}")
        if not failed:
            break
    if not states:
        raise ValueError(f"auto: no method could run on {ctx.request.describe()}: "
                         + "; ".join(f"{a['method']}: {a['skipped']}" for a in attempts))
    n_failed, _, _, index, state = min(states, key=lambda s: s[:4])
    bundle.model.load_state_dict(state)
    chosen = attempts[index]
    return {"chosen": chosen["method"], "data_free": chosen["data_free"], "passed_val": n_failed == 0,
            "val_before": _short(before), "attempts": attempts}
