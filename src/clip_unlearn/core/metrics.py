"""Classification metrics on predictions (plain tensors), as CLIP_benchmark reports them.

    top1(preds, labels); mean_per_class_recall(preds, labels, n); per_class_accuracy(...)
"""

from __future__ import annotations

from collections import defaultdict

import torch


def top1(preds: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return (preds == labels).float().mean().item()


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Recall of each class (None for a class with no examples)."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append((preds[mask] == c).float().mean().item() if mask.any() else None)
    return out


def mean_per_class_recall(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    recalls = [r for r in per_class_accuracy(preds, labels, num_classes) if r is not None]
    return sum(recalls) / len(recalls) if recalls else float("nan")


def per_subgroup_accuracy(preds: torch.Tensor, labels: torch.Tensor, attrs: list[dict[str, str]],
                          classes: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{class: {"attr=value": {"top1": acc, "n": count}}} for every attribute value in every class."""
    hits: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for p, y, a in zip(preds.tolist(), labels.tolist(), attrs):
        for k, v in a.items():
            h = hits[(classes[y], f"{k}={v}")]
            h[0] += int(p == y)
            h[1] += 1
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (cls, key), (correct, n) in sorted(hits.items()):
        out.setdefault(cls, {})[key] = {"top1": correct / n, "n": n}
    return out
