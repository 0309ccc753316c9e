"""The one way to run a method from params: a request, params and a lineage make the method's
context; the result is judged by the one gate (core/gate.py) with params `gate:` plus the
request's own thresholds. `unlearn forget`, the benchmark and the erasure job all come here.

    result = unlearn(params, bundle, request, "auto", lineage=earlier, thresholds=req.thresholds)
    judged = judge(params, bundle, result, lineage=earlier, thresholds=req.thresholds)   # test split
    judged["passed"], judged["checks"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from clip_unlearn.core import gate
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.schema import Section
from clip_unlearn.methods import UnlearnContext, run_method


def gate_in_force(params, overrides: dict | None = None) -> gate.Thresholds:
    """The gate in force: params `gate:` with a request's overrides (ConfigError names a bad key)."""
    return gate.thresholds(params.gate, overrides)


def others(params, request: ForgetRequest) -> list[str]:
    """The other datasets whose accuracy an erasure must keep."""
    return [d for d in params.data.datasets if d != request.dataset]


def method_context(params, request: ForgetRequest, lineage: Sequence[Earlier] = (), overrides: dict | None = None,
                   synthetic: Callable | None = None, log: Callable[[str], None] = print) -> UnlearnContext:
    return UnlearnContext(request=request, data_root=params.data.root, seed=params.benchmark.seed,
                          others=others(params, request), lineage=list(lineage), configs=dict(params.methods),
                          gate=gate_in_force(params, overrides), assurance=params.assurance, synthetic=synthetic, log=log)


def unlearn(params, bundle: ClipBundle, request: ForgetRequest, method: str, *, lineage: Sequence[Earlier] = (),
            thresholds: dict | None = None, config: Section | None = None, synthetic: Callable | None = None,
            log: Callable[[str], None] = print, before: dict | None = None) -> dict:
    """Unlearn `bundle` in place: run_method's result (before/after on test, seconds, info)."""
    ctx = method_context(params, request, lineage, thresholds, synthetic, log)
    return run_method(bundle, method, ctx, config, before)


def judge(params, bundle: ClipBundle, result: dict, *, lineage: Sequence[Earlier] = (), thresholds: dict | None = None,
          remeasure: bool = False, measure_all: bool = False, depth_always: bool = False,
          figure_path: str | Path | None = None, base: ClipBundle | None = None) -> dict:
    """The gate's verdict on an unlearned model (test split): gate.assess with params and the request's
    thresholds. `remeasure` measures `after` on `bundle` again instead of taking result["after"]."""
    request = ForgetRequest(**result["request"])
    return gate.assess(bundle, request, result["before"], gate_in_force(params, thresholds),
                       data_root=params.data.root, others=others(params, request), split="test", lineage=lineage,
                       assurance=params.assurance, after=None if remeasure else result["after"],
                       measure_all=measure_all, depth_always=depth_always, figure_path=figure_path, base=base)
