"""The dataset type every loader returns: (RGB PIL image, label) items with optional attributes,
cheap subsets, and uint8 tensors.

    forget = ds.select(["seven"], where={"ink": "red"})
    x, y = forget.tensors(image_size=224)          # uint8 [N,3,H,W], int64 [N]
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def unknown(what: str, value: Any, allowed: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown {what} {value!r}{hint} (allowed: {', '.join(map(str, allowed))})")


class ImageDataset(Dataset):
    """Map-style dataset of (RGB PIL image, label) with optional per-item attributes.

    `load(j)` decodes item j of the underlying source; `subset`/`select` only narrow the
    index list, so they are cheap and share the source.
    """

    def __init__(
        self,
        name: str,
        classes: Sequence[str],
        load: Callable[[int], Image.Image],
        labels: Sequence[int],
        attributes: dict[str, list[str]] | None = None,
        attrs: Sequence[dict[str, str]] | None = None,
        split: str | None = None,
        indices: Iterable[int] | None = None,
    ) -> None:
        self.name = name
        self.classes = list(classes)
        self.attributes = {k: list(v) for k, v in (attributes or {}).items()}
        self.split = split
        self._load = load
        self._labels = np.asarray(labels, dtype=np.int64)
        self._attrs = list(attrs) if attrs is not None else None
        if self._attrs is not None and len(self._attrs) != len(self._labels):
            raise ValueError("attrs and labels must have the same length")
        self._indices = np.arange(len(self._labels)) if indices is None else np.asarray(list(indices), dtype=np.int64)
        self._tensor_cache: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        j = self._indices[self._position(i)]
        image = self._load(int(j))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image, int(self._labels[j])

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"ImageDataset({self.name!r}{split}, n={len(self)}, classes={len(self.classes)})"

    def _position(self, i: int) -> int:
        n = len(self._indices)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for dataset of size {n}")
        return i % n

    @property
    def labels(self) -> list[int]:
        return self._labels[self._indices].tolist()

    def item_attrs(self, i: int) -> dict[str, str]:
        if self._attrs is None:
            return {}
        return dict(self._attrs[self._indices[self._position(i)]])

    def subset(self, indices: Iterable[int]) -> ImageDataset:
        """Items at these positions (of this dataset), in the given order."""
        positions = [self._position(int(i)) for i in indices]
        return self._with_indices(self._indices[positions] if positions else [])

    def _with_indices(self, indices: Iterable[int]) -> ImageDataset:
        return ImageDataset(
            self.name, self.classes, self._load, self._labels, self.attributes, self._attrs, self.split, indices
        )

    def select(
        self,
        classes: Sequence[str | int] | str | int | None = None,
        where: dict[str, str | Sequence[str]] | None = None,
        invert: bool = False,
    ) -> ImageDataset:
        """Items whose class is in `classes` AND whose attributes equal every `where` entry.

        classes: class names or labels (None: all). where: {"ink": "red"}; a list of values
        matches any of them. invert=True returns the complement within this dataset.
        """
        mask = np.ones(len(self._indices), dtype=bool)
        if classes is not None:
            if isinstance(classes, (str, int)):
                classes = [classes]
            wanted = [self._label_of(c) for c in classes]
            mask &= np.isin(self._labels[self._indices], wanted)
        for key, values in (where or {}).items():
            if not self.attributes:
                raise ValueError(f"dataset {self.name!r} has no attributes, cannot filter on {key!r}")
            if key not in self.attributes:
                raise unknown("attribute", key, list(self.attributes))
            values = [values] if isinstance(values, str) else list(values)
            for v in values:
                if v not in self.attributes[key]:
                    raise unknown(f"{key} value", v, self.attributes[key])
            assert self._attrs is not None
            mask &= np.array([self._attrs[j].get(key) in values for j in self._indices], dtype=bool)
        if invert:
            mask = ~mask
        return self._with_indices(self._indices[mask])

    def _label_of(self, c: str | int) -> int:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= c < len(self.classes):
                raise ValueError(f"label {c} out of range: dataset {self.name!r} has {len(self.classes)} classes")
            return int(c)
        if c not in self.classes:
            raise unknown("class", c, self.classes)
        return self.classes.index(c)

    def tensors(self, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 [N,3,H,W], int64 [N]) of all items, cached per instance (do not modify).

        With image_size, square images are resized (bicubic); others are resized on the
        short side and centre-cropped. Without it, all images must share one size.
        """
        if image_size not in self._tensor_cache:
            arrays = [np.asarray(_fit(self[i][0], image_size)) for i in range(len(self))]
            if len({a.shape for a in arrays}) > 1:
                raise ValueError(f"images in {self.name!r} differ in size; pass image_size to tensors()")
            if arrays:
                x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            else:
                side = image_size or 0
                x = torch.zeros((0, 3, side, side), dtype=torch.uint8)
            y = torch.as_tensor(self.labels, dtype=torch.int64)
            self._tensor_cache[image_size] = (x, y)
        return self._tensor_cache[image_size]


def _fit(image: Image.Image, size: int | None) -> Image.Image:
    if size is None or image.size == (size, size):
        return image
    w, h = image.size
    if w != h:
        s = size / min(w, h)
        image = image.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return image.crop((left, top, left + size, top + size))
    return image.resize((size, size), Image.Resampling.BICUBIC)


class FileLoader:
    """Picklable `load(j)` over a list of image paths (DataLoader workers may pickle it)."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [str(p) for p in paths]

    def __call__(self, j: int) -> Image.Image:
        with Image.open(self.paths[j]) as im:
            return im.convert("RGB")
