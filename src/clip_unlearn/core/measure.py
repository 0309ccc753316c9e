"""Before/after metrics of a forget request (zero-shot, forgotten classes stay candidates).

    m = request_metrics(bundle, request, data_root="data", others=["shapes"])
    m["forget_top1"], m["retain_top1"], m["other_top1"], m["per_class"]

For a subgroup request also `subgroup_rest_top1` (the class's other subgroups) and
`other_classes_top1` (every other class of the dataset).

With `lineage` (what the model forgot earlier): the items of those erasures are not "retained"
and leave the retain, subgroup and other-dataset figures; `m["lineage"]` holds each earlier
erasure's own forget top-1 on this model, keyed by ForgetRequest.describe().
"""

from __future__ import annotations

import numpy as np
import torch

from clip_unlearn.core import metrics
from clip_unlearn.core.clip_ops import encode_images
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.splits import cached_split, lineage_mask
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors, predict


def request_mask(ds, classes: list[str], where: dict[str, str] | None) -> np.ndarray:
    """Boolean mask over ds: items of `classes` whose attributes match `where`."""
    labels = {ds.classes.index(c) for c in classes}
    return np.array([y in labels and all(ds.item_attrs(i).get(k) == v for k, v in (where or {}).items())
                     for i, y in enumerate(ds.labels)], dtype=bool)


@torch.no_grad()
def predictions(bundle: ClipBundle, ds) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = ds.tensors()
    preds = predict(encode_images(bundle, images), class_vectors(bundle, ds.classes, zero_shot_templates(ds.name)))
    return preds, labels


def _mean(hit: np.ndarray, mask: np.ndarray) -> float:
    return float(hit[mask].mean()) if mask.any() else float("nan")


def lineage_top1(bundle: ClipBundle, lineage: list[ForgetRequest], data_root: str = "data", split: str = "test",
                 hits: dict | None = None) -> dict[str, float]:
    """Each earlier erasure's own forget top-1 on this model, keyed by describe() (NaN: no item)."""
    hits = dict(hits or {})
    out = {}
    for earlier in lineage:
        ds = cached_split(earlier.dataset, split, str(data_root))
        if earlier.dataset not in hits:
            p, y = predictions(bundle, ds)
            hits[earlier.dataset] = (p == y).numpy()
        out[earlier.describe()] = _mean(hits[earlier.dataset], earlier.covers(ds))
    return out


def request_metrics(bundle: ClipBundle, request: ForgetRequest, data_root: str = "data",
                    others: list[str] = (), split: str = "test", lineage: list[ForgetRequest] = ()) -> dict:
    ds = cached_split(request.dataset, split, str(data_root))
    preds, labels = predictions(bundle, ds)
    hit = (preds == labels).numpy()
    forget = request_mask(ds, request.classes, request.where)
    kept = ~lineage_mask(ds, list(lineage))
    retain = ~forget & kept
    out = {
        "forget_top1": _mean(hit, forget),
        "retain_top1": _mean(hit, retain),
        "n_forget": int(forget.sum()), "n_retain": int(retain.sum()),
        "per_class": dict(zip(ds.classes, metrics.per_class_accuracy(preds, labels, len(ds.classes)))),
    }
    if request.where:
        in_class = request_mask(ds, request.classes, None)
        out["subgroup_rest_top1"] = _mean(hit, in_class & ~forget & kept)
        out["other_classes_top1"] = _mean(hit, ~in_class & kept)
    other, hits = {}, {request.dataset: hit}
    for name in others:
        ods = cached_split(name, split, str(data_root))
        p, y = predictions(bundle, ods)
        hits[name] = (p == y).numpy()
        other[name] = _mean(hits[name], ~lineage_mask(ods, list(lineage)))
    out["lineage"] = lineage_top1(bundle, lineage, data_root, split, hits)
    out["other"] = other
    out["other_top1"] = float(np.mean(list(other.values()))) if other else float("nan")
    return out
