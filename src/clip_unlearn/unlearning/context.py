"""What a method may see while it unlearns: the request, data access, the original model.

Data-free methods get a context whose `forget_set` raises: they must never read real images
of what they forget (only class names, and synthetic images made from the model itself).

Lineage: `lineage` lists what the model already forgot in earlier erasures. Every image a
method (or the assurance checks) gets through the context comes from `ctx.dataset()` or
`ctx.other_sets()`, which drop those items: no stage trains, reminds, distills, calibrates,
probes or relearns on data whose erasure an earlier certificate attests.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from clip_unlearn.data import ImageDataset, load_dataset
from clip_unlearn.models import ClipBundle
from clip_unlearn.unlearning.request import ForgetRequest


class DataFreeViolation(RuntimeError):
    """A data-free method asked for real images of what it forgets."""


@lru_cache(maxsize=16)
def cached_split(spec: str, split: str, root: str) -> ImageDataset:
    """One loaded split per process: evaluation, methods and the oracle share decoded images."""
    return load_dataset(spec, split, root)


@dataclass
class UnlearnContext:
    request: ForgetRequest
    data_root: str = "data"
    seed: int = 0
    data_free: bool = False
    synthetic: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None  # (normalized x, labels)
    log: Callable[[str], None] = print
    original: ClipBundle | None = field(default=None, repr=False)  # frozen copy taken before unlearning
    lineage: list[ForgetRequest] = field(default_factory=list)  # erased earlier: never read again
    others: list[str] = field(default_factory=list)             # other datasets (retained images only)
    configs: dict = field(default_factory=dict)         # method name -> config (params.yaml methods:), for auto
    thresholds: dict | None = None                      # the verify thresholds in force (auto's val gate)
    lineage_limits: dict[str, float] = field(default_factory=dict)  # describe() -> limit it was verified at
    assurance: object | None = None                     # AssuranceConfig: auto's val gate runs the relearn check

    def dataset(self, split: str = "train") -> ImageDataset:
        """The request's dataset without the items of earlier erasures (the one place they are dropped);
        items this request names itself stay (erasing again what was erased before), under its own rules."""
        if not self.lineage:
            return cached_split(self.request.dataset, split, str(self.data_root))
        return retained_split(self.request.dataset, split, str(self.data_root), self._lineage_key,
                              self.request.describe())

    def other_sets(self, split: str = "train") -> list[ImageDataset]:
        """The other datasets' images (retained: the lineage's items dropped)."""
        return [retained_split(name, split, str(self.data_root), self._lineage_key) if self.lineage
                else cached_split(name, split, str(self.data_root)) for name in self.others if name != self.request.dataset]

    @property
    def _lineage_key(self) -> tuple[str, ...]:
        return tuple(sorted(r.describe() for r in self.lineage))

    @property
    def classes(self) -> list[str]:
        return self.dataset("train").classes

    def class_names(self, spec: str) -> list[str]:
        """Class names of any dataset (no image is read)."""
        return cached_split(spec, "train", str(self.data_root)).classes

    @property
    def forget_labels(self) -> list[int]:
        return [self.classes.index(c) for c in self.request.classes]

    @property
    def retain_classnames(self) -> list[str]:
        return [c for c in self.classes if c not in self.request.classes]

    def forget_set(self, split: str = "train") -> ImageDataset:
        """Real images of what is forgotten (refused to data-free methods)."""
        if self.data_free:
            raise DataFreeViolation(f"a data-free method asked for real images of {self.request.describe()}")
        return self.dataset(split).select(self.request.classes, self.request.where or None)

    def retain_set(self, split: str = "train") -> ImageDataset:
        """Everything else in the same dataset (for a subgroup: the class's other subgroups too)."""
        return self.dataset(split).select(self.request.classes, self.request.where or None, invert=True)

    def synthetic_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.synthetic is None:
            raise RuntimeError("this run has no synthetic forget set; the method needs one (see synthesize.py)")
        return self.synthetic()


def lineage_mask(ds: ImageDataset, lineage: list[ForgetRequest]) -> np.ndarray:
    """Items of ds that an earlier erasure of the lineage covers."""
    mask = np.zeros(len(ds), dtype=bool)
    for earlier in lineage:
        mask |= earlier.covers(ds)
    return mask


@lru_cache(maxsize=32)
def retained_split(spec: str, split: str, root: str, lineage: tuple[str, ...], keep: str | None = None) -> ImageDataset:
    """A split without the items of the lineage's erasures (given as ForgetRequest.describe()),
    except those that `keep` (a describe() too) names."""
    ds = cached_split(spec, split, root)
    if not lineage:
        return ds
    drop = lineage_mask(ds, [ForgetRequest.parse(t) for t in lineage])
    if keep:
        drop &= ~ForgetRequest.parse(keep).covers(ds)
    return ds.subset(np.flatnonzero(~drop))


def freeze_copy(bundle: ClipBundle) -> ClipBundle:
    """A deep copy of the model with gradients off: the teacher / soup anchor."""
    frozen = copy.copy(bundle)
    frozen.model = copy.deepcopy(bundle.model).eval().requires_grad_(False)
    return frozen
