"""Run one method on one request, with before (BF) and after (AF) metrics (test split) and wall time.

    ctx = UnlearnContext(request=ForgetRequest(dataset="digits", classes=["seven"]), others=["shapes"])
    result = run_method(bundle, "projection", ctx)        # unlearns bundle in place
    result["before"], result["after"], result["seconds"], result["info"]

The pipeline builds the context from params, a request and a lineage in one place
(pipeline/unlearn.py); tests and scripts may build one by hand.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import ClipBundle, changed_parts
from clip_unlearn.core.schema import Section, validate
from clip_unlearn.methods.context import UnlearnContext, freeze_copy
from clip_unlearn.methods.registry import get_method


def check_finite(model: torch.nn.Module, what: str) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"{what}: non-finite weights after unlearning ({bad[:3]}...); "
                                 "nothing was saved: lower the method's learning rate.")


def run_method(bundle: ClipBundle, method: str, ctx: UnlearnContext, cfg: Section | dict | None = None,
               before: dict | None = None) -> dict:
    """Unlearn `bundle` in place with `method` (config `cfg`, else ctx.configs[method], else defaults).
    `before` may pass BF metrics already measured for this model on the test split."""
    m = get_method(method)
    cfg = cfg if cfg is not None else ctx.configs.get(method)
    cfg = cfg if isinstance(cfg, Section) else validate(m.config_cls, cfg or {}, f"methods.{method}")
    ctx = dataclasses.replace(ctx, data_free=m.data_free)
    train = ctx.dataset("train")
    ctx.request.check(train.classes, train.attributes)
    before = before or request_metrics(bundle, ctx.request, ctx.data_root, ctx.others, lineage=ctx.earlier)
    ctx.original = freeze_copy(bundle)
    torch.manual_seed(ctx.seed)
    t0 = time.perf_counter()
    info = m.fn(bundle, ctx, cfg) or {}
    seconds = time.perf_counter() - t0
    bundle.model.eval()
    check_finite(bundle.model, f"{method} on {ctx.request.describe()}")
    after = request_metrics(bundle, ctx.request, ctx.data_root, ctx.others, lineage=ctx.earlier)
    return {"method": method, "request": ctx.request.model_dump(), "config": cfg.model_dump(),
            "data_free": bool(info.get("data_free", m.data_free)),
            "changed": changed_parts(ctx.original.model, bundle.model),
            "lineage": [e.forgotten for e in ctx.lineage], "before": before, "after": after,
            "seconds": round(seconds, 3), "info": info}
