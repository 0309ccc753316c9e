"""Run one method on one request, with before (BF) and after (AF) metrics and wall time.

    result = run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "projection",
                        data_root="data", others=["shapes"])
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from clip_unlearn.models import ClipBundle
from clip_unlearn.schema import Section, validate
from clip_unlearn.unlearning.context import UnlearnContext, freeze_copy
from clip_unlearn.unlearning.evaluate import request_metrics
from clip_unlearn.unlearning.registry import get_method
from clip_unlearn.unlearning.request import ForgetRequest


def check_finite(model: torch.nn.Module, what: str) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"{what}: non-finite weights after unlearning ({bad[:3]}...); "
                                 "nothing was saved: lower the method's learning rate.")


def run_method(bundle: ClipBundle, request: ForgetRequest, method: str, cfg: Section | dict | None = None,
               data_root: str = "data", others: list[str] = (), seed: int = 0,
               synthetic: Callable | None = None, log: Callable[[str], None] = print,
               before: dict | None = None, lineage: list[ForgetRequest] = (), configs: dict | None = None,
               thresholds: dict | None = None, lineage_limits: dict | None = None, assurance=None) -> dict:
    """Unlearn in place. `before` may pass BF metrics already computed for this model; `lineage`
    lists what the model forgot earlier (never read, re-measured after). `configs` (every method's
    config), `thresholds`, `lineage_limits` and `assurance` are what `auto` needs to gate its attempts."""
    m = get_method(method)
    cfg = validate(m.config_cls, cfg or {}, f"methods.{method}") if not isinstance(cfg, Section) else cfg
    ctx = UnlearnContext(request=request, data_root=data_root, seed=seed, data_free=m.data_free,
                         synthetic=synthetic, log=log, lineage=list(lineage), others=list(others),
                         configs=dict(configs or {}), thresholds=thresholds, lineage_limits=dict(lineage_limits or {}),
                         assurance=assurance)
    train = ctx.dataset("train")
    request.check(train.classes, train.attributes)
    before = before or request_metrics(bundle, request, data_root, list(others), lineage=lineage)
    ctx.original = freeze_copy(bundle)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    info = m.fn(bundle, ctx, cfg) or {}
    seconds = time.perf_counter() - t0
    bundle.model.eval()
    check_finite(bundle.model, f"{method} on {request.describe()}")
    after = request_metrics(bundle, request, data_root, list(others), lineage=lineage)
    return {"method": method, "request": request.model_dump(), "config": cfg.model_dump(),
            "data_free": bool(info.get("data_free", m.data_free)),
            "lineage": [r.describe() for r in lineage], "before": before, "after": after,
            "seconds": round(seconds, 3), "info": info}
