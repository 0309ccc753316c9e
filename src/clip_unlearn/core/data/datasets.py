"""One loader API for every image source: built-in datasets, image folders, torchvision sets.

    from clip_unlearn.core.data import load_dataset

    test = load_dataset("digits", split="test", root="data")      # built-in, see builtin.py
    image, label = test[0]                                          # RGB PIL image, int
    forget = test.select(["seven"], where={"ink": "red"})           # a subgroup
    retain = test.select(["seven"], where={"ink": "red"}, invert=True)
    x, y = forget.tensors(image_size=224)                           # uint8 [N,3,H,W], int64 [N]

    load_dataset("imagefolder:/data/my_photos", split="val")
    load_dataset("cifar10:/data/cifar", split="train")              # never downloads

Every dataset has the splits "train", "val" and "test"; loaders that have no val split of
their own carve a deterministic one out of train (see external.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from clip_unlearn.core.data.builtin import BUILTIN_DATASETS, FORMAT_VERSION, SPLITS
from clip_unlearn.core.data.image_dataset import FileLoader, ImageDataset, unknown

EXTERNAL_KINDS = ("imagefolder", "cifar10", "caltech101", "flowers102", "stanfordcars", "oxfordpet")
DATASET_KINDS = BUILTIN_DATASETS + EXTERNAL_KINDS


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"digits" -> ("digits", None); "cifar10:/data/cifar" -> ("cifar10", "/data/cifar")."""
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in DATASET_KINDS:
        raise unknown("dataset", kind if sep else spec, DATASET_KINDS)
    if kind in EXTERNAL_KINDS and not path:
        raise ValueError(f"dataset {kind!r} needs a local path: '{kind}:/path/to/root'")
    return kind, (path or None)


def load_dataset(spec: str, split: str = "test", root: str | Path = "data") -> ImageDataset:
    """Load a split of a dataset named by `spec` (see DATASET_KINDS and the module docstring).

    Built-ins live in `<root>/<name>`; "digits:/some/dir" points at a generated dataset
    folder directly. External specs carry their own path; `root` is ignored for them.
    """
    kind, path = parse_spec(spec)
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    if kind in BUILTIN_DATASETS:
        return load_builtin(Path(path).expanduser() if path else Path(root) / kind, split)
    from clip_unlearn.core.data import external  # heavy: torchvision's dataset classes

    return external.LOADERS[kind](Path(path).expanduser(), split)  # type: ignore[arg-type]


def load_builtin(folder: str | Path, split: str) -> ImageDataset:
    """Load a split of a dataset written by `generate_builtin` (folder = `<root>/<name>`)."""
    folder = Path(folder)
    meta_path, manifest = folder / "meta.json", folder / "manifest.jsonl"
    if not (meta_path.is_file() and manifest.is_file()):
        name = folder.name
        raise FileNotFoundError(
            f"built-in dataset {name!r} not found in {folder} (no meta.json/manifest.jsonl). "
            f"Generate it with `unlearn data` or "
            f"clip_unlearn.core.data.generate_builtin({name!r}, {str(folder.parent)!r})"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{folder} has format version {meta.get('version')}, expected {FORMAT_VERSION}: regenerate it")
    items = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    items = [it for it in items if it["split"] == split]
    return ImageDataset(
        name=meta["name"],
        classes=meta["classes"],
        load=FileLoader([folder / it["path"] for it in items]),
        labels=[it["label"] for it in items],
        attributes=meta["attributes"],
        attrs=[it["attrs"] for it in items],
        split=split,
    )
