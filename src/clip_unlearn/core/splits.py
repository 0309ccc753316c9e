"""Dataset splits as every stage reads them: loaded once per process, and without the items that
earlier erasures of the model's lineage forgot.

    ds = cached_split("digits", "test", "data")
    kept = retained_split("digits", "train", "data", ("digits:seven",))   # sevens dropped
    mask = lineage_mask(ds, [ForgetRequest.parse("digits:seven")])

The one place where lineage items are dropped: methods (through their context), measurements, the
relearning check and the probe all read data through these functions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from clip_unlearn.core.data import ImageDataset, load_dataset
from clip_unlearn.core.request import ForgetRequest


@lru_cache(maxsize=16)
def cached_split(spec: str, split: str, root: str) -> ImageDataset:
    """One loaded split per process: evaluation, methods and the oracle share decoded images."""
    return load_dataset(spec, split, root)


def lineage_mask(ds: ImageDataset, lineage: list[ForgetRequest]) -> np.ndarray:
    """Items of ds that an earlier erasure of the lineage covers."""
    mask = np.zeros(len(ds), dtype=bool)
    for earlier in lineage:
        mask |= earlier.covers(ds)
    return mask


def lineage_key(lineage: list[ForgetRequest]) -> tuple[str, ...]:
    return tuple(sorted(r.describe() for r in lineage))


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


def request_split(request: ForgetRequest, split: str, root: str, lineage: list[ForgetRequest] = ()) -> ImageDataset:
    """The request's dataset without the lineage's items; the items the request names itself stay
    (erasing again what was erased before)."""
    if not lineage:
        return cached_split(request.dataset, split, str(root))
    return retained_split(request.dataset, split, str(root), lineage_key(list(lineage)), request.describe())


def other_splits(names: list[str], split: str, root: str, lineage: list[ForgetRequest] = ()) -> list[ImageDataset]:
    """Other datasets' splits, the lineage's items dropped."""
    key = lineage_key(list(lineage))
    return [retained_split(n, split, str(root), key) if key else cached_split(n, split, str(root)) for n in names]
