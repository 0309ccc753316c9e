"""What a method may see while it unlearns: the request, data access, the original model, and
(for `auto`) the gate it is judged by.

    ctx = UnlearnContext(request=ForgetRequest(dataset="digits", classes=["seven"]), data_root="data",
                         others=["shapes"], lineage=[Earlier(...)], gate=Thresholds())
    ctx.retain_set("train"), ctx.forget_set("train"), ctx.other_sets("val")

Data-free methods get a context whose `forget_set` raises: they must never read real images
of what they forget (only class names, and synthetic images made from the model itself). The others
get every forgotten train image except the depth attacks' labelled ones (core/depth.attacker_items).

Lineage: `lineage` lists what the model already forgot in earlier erasures. Every image a
method gets through the context comes from `ctx.dataset()` or `ctx.other_sets()`, which drop
those items (core/splits.py): no stage trains, reminds, distills or calibrates on data whose
erasure an earlier certificate attests.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from clip_unlearn.core.assurance import AssuranceConfig
from clip_unlearn.core.data import ImageDataset
from clip_unlearn.core.depth import DepthConfig, attacker_items
from clip_unlearn.core.gate import Thresholds
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.splits import cached_split, other_splits, request_split


class DataFreeViolation(RuntimeError):
    """A data-free method asked for real images of what it forgets."""


@dataclass
class UnlearnContext:
    request: ForgetRequest
    data_root: str = "data"
    seed: int = 0
    data_free: bool = False
    synthetic: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None  # (normalized x, labels)
    log: Callable[[str], None] = print
    original: ClipBundle | None = field(default=None, repr=False)  # frozen copy taken before unlearning
    lineage: list[Earlier] = field(default_factory=list)        # erased earlier: never read again
    others: list[str] = field(default_factory=list)             # other datasets (retained images only)
    configs: dict = field(default_factory=dict)         # method name -> config (params.yaml methods:), for auto
    gate: Thresholds = field(default_factory=Thresholds)  # the gate in force (auto's val gate, soup limits)
    assurance: AssuranceConfig | None = None            # relearning settings of auto's val gate

    @property
    def earlier(self) -> list[ForgetRequest]:
        """What the lineage forgot, as requests."""
        return [e.request for e in self.lineage]

    def dataset(self, split: str = "train") -> ImageDataset:
        """The request's dataset without the items of earlier erasures; items this request names
        itself stay (erasing again what was erased before), under its own rules."""
        return request_split(self.request, split, self.data_root, self.earlier)

    def other_sets(self, split: str = "train") -> list[ImageDataset]:
        """The other datasets' images (retained: the lineage's items dropped)."""
        return other_splits([n for n in self.others if n != self.request.dataset], split, self.data_root,
                            self.earlier)

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
        """Real images of what is forgotten (refused to data-free methods). On the train split, the
        depth attacks' labelled images (core/depth.attacker_items) are left out: the verifier scores
        an attacker who holds them, so no method may have fitted them."""
        if self.data_free:
            raise DataFreeViolation(f"a data-free method asked for real images of {self.request.describe()}")
        ds = self.dataset(split)
        if split != "train":
            return ds.select(self.request.classes, self.request.where or None)
        depth = self.assurance.depth if self.assurance else DepthConfig()
        held = attacker_items(ds, self.request, depth)
        left = ds.subset(np.setdiff1d(np.arange(len(ds)), held)).select(self.request.classes, self.request.where or None)
        if len(held) and not len(left):
            raise ValueError(f"the depth attacks hold all {len(held)} train images of {self.request.describe()} "
                             f"(assurance.depth: shots {depth.shots}, probe_per_class {depth.probe_per_class}), so "
                             "none is left for a method that reads them; use a data-free method, or lower those")
        return left

    def retain_set(self, split: str = "train") -> ImageDataset:
        """Everything else in the same dataset (for a subgroup: the class's other subgroups too)."""
        return self.dataset(split).select(self.request.classes, self.request.where or None, invert=True)

    def synthetic_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.synthetic is None:
            raise RuntimeError("this run has no synthetic forget set; the method needs one (see synthetic.py)")
        return self.synthetic()


def freeze_copy(bundle: ClipBundle) -> ClipBundle:
    """A deep copy of the model with gradients off: the teacher / soup anchor."""
    frozen = copy.copy(bundle)
    frozen.model = copy.deepcopy(bundle.model).eval().requires_grad_(False)
    return frozen
