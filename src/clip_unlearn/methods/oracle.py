"""The field's gold standard: the reference model retrained from scratch without the forgotten data.

    run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "oracle")        # ~9 min, 2 cores
    run_method(bundle, req, "oracle", {"steps": 20})                                          # a short check
    sets = oracle_train_sets(req, "data", ["digits", "shapes"])   # what it trains on

Same bootstrap settings as the model being unlearned (stored in its metadata by
`save_model`; `bootstrap` overrides them), on the train splits of the built-in datasets with
the forgotten items removed; the new weights replace bundle.model's. Cheap for our small
reference model, impossible for a web-scale CLIP: a yardstick, not a method.
"""

from __future__ import annotations

import torch
from pydantic import Field

from clip_unlearn.core.data import BUILTIN_DATASETS, ImageDataset
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import Section
from clip_unlearn.core.splits import cached_split, lineage_key, retained_split
from clip_unlearn.core.train import BootstrapConfig, train_reference
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import register


class OracleConfig(Section):
    bootstrap: BootstrapConfig | None = Field(
        None, description="training settings; null = those stored with the model (else the defaults)")
    steps: int | None = Field(None, ge=1, description="override bootstrap.steps (short checks)")
    datasets: list[str] | None = Field(
        None, description="built-in datasets to train on; null = those the model was trained on")
    # An execution setting, not a hyperparameter: on a shared 2-core machine, 2 threads next to
    # other jobs ran a step 13x slower than 1 (measured), so by default keep the caller's setting.
    threads: int | None = Field(None, ge=0, description="torch threads; null = the process's current setting")


def oracle_train_sets(request: ForgetRequest, data_root: str, datasets: list[str],
                      lineage: list[ForgetRequest] = ()) -> list[ImageDataset]:
    """Train splits of `datasets`, with the request's items (and the lineage's) removed."""
    if request.dataset not in datasets:
        raise ValueError(f"oracle: {request.dataset!r} is not one of the training datasets {datasets}; "
                         "retraining from scratch only covers the built-in data the model was trained on")
    sets = []
    for name in datasets:
        ds = retained_split(name, "train", str(data_root), lineage_key(list(lineage)))
        if name == request.dataset:
            ds = ds.select(request.classes, request.where or None, invert=True)
        sets.append(ds)
    return sets


def _bootstrap(bundle: ClipBundle, cfg: OracleConfig) -> BootstrapConfig:
    boot = cfg.bootstrap or BootstrapConfig.model_validate(bundle.meta.get("bootstrap") or {})
    update = {"threads": torch.get_num_threads() if cfg.threads is None else cfg.threads}
    if cfg.steps:
        update["steps"] = cfg.steps
    return boot.model_copy(update=update)


@register("oracle", OracleConfig, data_free=False)
def oracle(bundle: ClipBundle, ctx: UnlearnContext, cfg: OracleConfig) -> dict:
    """Retrain from scratch without the forgotten data (the gold standard; minutes)."""
    datasets = cfg.datasets or bundle.meta.get("datasets") or list(BUILTIN_DATASETS)
    sets = oracle_train_sets(ctx.request, ctx.data_root, datasets, ctx.earlier)
    boot = _bootstrap(bundle, cfg)
    fresh, history = train_reference(sets, boot, arch=bundle.arch, log=ctx.log)
    bundle.model.load_state_dict(fresh.model.state_dict())
    full = len(cached_split(ctx.request.dataset, "train", str(ctx.data_root)))
    return {"steps": boot.steps, "train_seconds": fresh.meta.get("train_seconds"),
            "datasets": datasets, "n_train": {ds.name: len(ds) for ds in sets},
            "n_removed": full - len(sets[datasets.index(ctx.request.dataset)]),
            "final_loss": history[-1]["loss"] if history else None}
