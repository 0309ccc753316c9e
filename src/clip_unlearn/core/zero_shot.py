"""Zero-shot classification as LAION's CLIP_benchmark does it.

Class vectors are the mean of normalized template embeddings, renormalized; logits are
100 * cos. Reports top-1, mean per-class recall, per-class and per-subgroup accuracy.

    from clip_unlearn.core.zero_shot import evaluate
    result = evaluate(bundle, load_dataset("digits", "test"))   # a JSON-ready dict
"""

from __future__ import annotations

import torch

from clip_unlearn.core import metrics
from clip_unlearn.core.clip_ops import encode_images, encode_texts
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.templates import zero_shot_templates


@torch.no_grad()
def class_vectors(bundle: ClipBundle, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[C, D] normalized zero-shot classifier."""
    texts = [t.format(c=c) for c in classnames for t in templates]
    feats = encode_texts(bundle, texts).view(len(classnames), len(templates), -1)
    w = feats.mean(dim=1)
    return w / w.norm(dim=-1, keepdim=True)


@torch.no_grad()
def predict(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    return (100.0 * image_features @ classifier.T.to(image_features.device)).argmax(dim=-1).cpu()


def evaluate(bundle: ClipBundle, dataset, templates: list[str] | None = None,
             batch_size: int = 512) -> dict:
    """Zero-shot metrics of `bundle` on an ImageDataset."""
    templates = templates or zero_shot_templates(dataset.name)
    images, labels = dataset.tensors()
    preds = predict(encode_images(bundle, images, batch_size), class_vectors(bundle, dataset.classes, templates))
    return report(preds, labels, dataset)


def report(preds: torch.Tensor, labels: torch.Tensor, dataset) -> dict:
    n = len(dataset.classes)
    per_class = metrics.per_class_accuracy(preds, labels, n)
    attrs = [dataset.item_attrs(i) for i in range(len(dataset))]
    return {
        "dataset": dataset.name,
        "n": len(labels),
        "top1": metrics.top1(preds, labels),
        "mean_per_class_recall": metrics.mean_per_class_recall(preds, labels, n),
        "per_class": {c: a for c, a in zip(dataset.classes, per_class)},
        "per_subgroup": metrics.per_subgroup_accuracy(preds, labels, attrs, dataset.classes),
    }
