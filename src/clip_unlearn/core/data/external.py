"""Loaders for user data already on disk: an image folder or a torchvision dataset root.

    from clip_unlearn.core.data import load_dataset

    load_dataset("imagefolder:/data/photos", "train")   # <path>/<split>/<class>/*.png or <path>/<class>/*
    load_dataset("cifar10:/data/cifar", "val")          # the root passed to torchvision
    load_dataset("flowers102:/data", "test")

Nothing is downloaded (torchvision classes get download=False). Splits are always
"train"/"val"/"test": where the source has no val split, a deterministic, per-class
VAL_FRACTION of train is held out (and removed from train); Caltech101 and folders without
split sub-folders get a deterministic per-class 70/15/15 split.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

# clip_unlearn/__init__.py has run before this import, so torchvision loads on CPU-only torch.
from torchvision.datasets import CIFAR10, Caltech101, Flowers102, OxfordIIITPet, StanfordCars

from clip_unlearn.core.data.builtin import SPLITS, split_counts
from clip_unlearn.core.data.image_dataset import FileLoader, ImageDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VAL_FRACTION = 0.1
SPLIT_SEED = 0

FLOWERS102_CLASSES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon",
    "colt's foot", "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower",
    "peruvian lily", "balloon flower", "giant white arum lily", "fire lily", "pincushion flower",
    "fritillary", "red ginger", "grape hyacinth", "corn poppy", "prince of wales feathers",
    "stemless gentian", "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort",
    "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
    "geranium", "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen",
    "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper",
    "blackberry lily",
]  # fmt: skip


# ---------------------------------------------------------------- split helpers


def per_class_split(labels: Sequence[int], split: str, fractions=(0.7, 0.15, 0.15)) -> list[int]:
    """Indices of `split` under a deterministic per-class split (seeded shuffle, then cut)."""
    labels = np.asarray(labels)
    part = SPLITS.index(split)
    chosen: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.random.default_rng([SPLIT_SEED, int(label)]).permutation(len(members))]
        bounds = np.cumsum([0, *split_counts(len(members), fractions)])
        chosen.extend(members[bounds[part] : bounds[part + 1]].tolist())
    return sorted(chosen)


def holdout_split(labels: Sequence[int], split: str) -> list[int]:
    """For sources with train/test only: "val" is VAL_FRACTION of train per class, "train" the rest."""
    labels = np.asarray(labels)
    val: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_val = round(len(members) * VAL_FRACTION)
        if len(members) >= 2:
            n_val = max(1, n_val)
        order = np.random.default_rng([SPLIT_SEED, int(label)]).permutation(len(members))
        val.extend(members[order[:n_val]].tolist())
    if split == "val":
        return sorted(val)
    return sorted(set(range(len(labels))) - set(val))


def _require(root: Path, needed: Sequence[str], kind: str, layout: str) -> None:
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{kind}: {root / missing[0]} not found. Expected a local copy (nothing is downloaded) laid out as:\n"
            f"{layout}"
        )


def _root_of(path: Path, folder: str) -> Path:
    """Accept both the torchvision root and its dataset sub-folder."""
    return path.parent if path.name == folder and not (path / folder).exists() else path


class _TorchvisionLoader:
    def __init__(self, ds) -> None:
        self.ds = ds

    def __call__(self, j: int) -> Image.Image:
        return self.ds[j][0].convert("RGB")  # also loads lazily opened files, closing them


def _wrap(name: str, classes: Sequence[str], ds, labels: Sequence[int], split: str, indices=None) -> ImageDataset:
    return ImageDataset(name, classes, _TorchvisionLoader(ds), labels, split=split, indices=indices)


def _readable(name: str) -> str:
    return name.replace("_", " ").strip()


# ---------------------------------------------------------------- image folder


def load_imagefolder(path: Path, split: str) -> ImageDataset:
    """`<path>/<split>/<class>/*.png|jpg|...`, or `<path>/<class>/*` (then a per-class 70/15/15 split).

    Class names are folder names with "_" as spaces; labels follow the sorted folder names.
    A missing val folder is carved out of train like the torchvision loaders do.
    """
    layout = "  <path>/{train,val,test}/<class>/*.png|jpg|jpeg|bmp|webp  or  <path>/<class>/*.png|..."
    if not path.is_dir():
        raise FileNotFoundError(f"imagefolder: {path} is not a directory. Expected:\n{layout}")
    split_dirs = {s: path / s for s in SPLITS if (path / s).is_dir()}
    bases = list(split_dirs.values()) if split_dirs else [path]
    folders = sorted({d.name for b in bases for d in b.iterdir() if d.is_dir() and not d.name.startswith(".")})
    folders = [f for f in folders if any(_images_in(b / f) for b in bases)]
    if not folders:
        raise FileNotFoundError(f"imagefolder: no class folders with images under {path}. Expected:\n{layout}")
    classes = [_readable(f) for f in folders]

    def scan(base: Path) -> tuple[list[Path], list[int]]:
        files, labels = [], []
        for label, folder in enumerate(folders):
            for f in _images_in(base / folder):
                files.append(f)
                labels.append(label)
        return files, labels

    name = path.resolve().name
    if not split_dirs:
        files, labels = scan(path)
        # Cut by a hash of the relative file name: stable under renames of the parent folder.
        keys = [hashlib.md5(f"{folders[y]}/{f.name}".encode()).hexdigest() for f, y in zip(files, labels)]
        order = sorted(range(len(files)), key=lambda i: (labels[i], keys[i]))
        files, labels = [files[i] for i in order], [labels[i] for i in order]
        keep = _contiguous_split(labels, split)
    elif split in split_dirs:
        files, labels = scan(split_dirs[split])
        keep = list(range(len(files))) if split != "train" or "val" in split_dirs else holdout_split(labels, "train")
    elif split == "val" and "train" in split_dirs:
        files, labels = scan(split_dirs["train"])
        keep = holdout_split(labels, "val")
    else:
        raise FileNotFoundError(f"imagefolder: no {split!r} folder in {path} (found: {', '.join(split_dirs)})")
    return ImageDataset(name, classes, FileLoader(files), labels, split=split, indices=keep)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())


def _contiguous_split(labels: list[int], split: str) -> list[int]:
    """Per class (items already in hash order): first 70% train, next 15% val, rest test."""
    part = SPLITS.index(split)
    labels_arr = np.asarray(labels)
    chosen: list[int] = []
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        bounds = np.cumsum([0, *split_counts(len(members))])
        chosen.extend(members[bounds[part] : bounds[part + 1]].tolist())
    return chosen


# ---------------------------------------------------------------- torchvision datasets
# torchvision verifies md5 sums of CIFAR-10 batches and Flowers-102 .mat files against the
# official archives. Re-exported or test copies have other hashes, so the subclasses below
# only require the files to exist; a corrupt file still fails when it is parsed.


class _CIFAR10(CIFAR10):
    def _check_integrity(self) -> bool:
        batches = self.train_list if self.train else self.test_list
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in batches)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _Flowers102(Flowers102):
    def _check_integrity(self) -> bool:
        files = [self._base_folder / self._file_dict[k][0] for k in ("label", "setid")]
        return self._images_folder.is_dir() and all(f.is_file() for f in files)


def load_cifar10(path: Path, split: str) -> ImageDataset:
    root = _root_of(path, CIFAR10.base_folder)
    files = [f for f, _ in (CIFAR10.test_list if split == "test" else CIFAR10.train_list)]
    layout = f"  {root}/cifar-10-batches-py/{{data_batch_1..5, test_batch, batches.meta}} (python pickles)"
    _require(root / CIFAR10.base_folder, [*files, "batches.meta"], "cifar10", layout)
    ds = _CIFAR10(str(root), train=split != "test", download=False)
    indices = None if split == "test" else holdout_split(ds.targets, split)
    return _wrap("cifar10", ds.classes, ds, ds.targets, split, indices)


def load_caltech101(path: Path, split: str) -> ImageDataset:
    root = _root_of(path, "caltech101")
    layout = (
        f"  {root}/caltech101/101_ObjectCategories/<category>/image_0001.jpg ...\n"
        f"  {root}/caltech101/101_ObjectCategories/BACKGROUND_Google/ (as in the official archive)"
    )
    # Checked first: Caltech101 would otherwise create the folder and then fail vaguely.
    # torchvision removes BACKGROUND_Google (not a class) from the list and fails without it.
    categories = "caltech101/101_ObjectCategories"
    _require(root, [categories, f"{categories}/BACKGROUND_Google"], "caltech101", layout)
    ds = Caltech101(str(root), target_type="category", download=False)
    classes = [_readable(c).lower() for c in ds.categories]
    return _wrap("caltech101", classes, ds, ds.y, split, per_class_split(ds.y, split))


def load_flowers102(path: Path, split: str) -> ImageDataset:
    root = _root_of(path, "flowers-102")
    layout = f"  {root}/flowers-102/{{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat}}"
    _require(root, ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"], "flowers102", layout)
    ds = _Flowers102(str(root), split=split, download=False)
    return _wrap("flowers102", FLOWERS102_CLASSES, ds, ds._labels, split)


def load_stanfordcars(path: Path, split: str) -> ImageDataset:
    root = _root_of(path, "stanford_cars")
    base = "stanford_cars"
    if split == "test":
        needed = [f"{base}/cars_test_annos_withlabels.mat", f"{base}/cars_test"]
    else:
        needed = [f"{base}/devkit/cars_train_annos.mat", f"{base}/cars_train"]
    layout = (
        f"  {root}/stanford_cars/devkit/{{cars_meta.mat, cars_train_annos.mat}}\n"
        f"  {root}/stanford_cars/cars_test_annos_withlabels.mat\n"
        f"  {root}/stanford_cars/{{cars_train, cars_test}}/*.jpg"
    )
    _require(root, [f"{base}/devkit/cars_meta.mat", *needed], "stanfordcars", layout)
    ds = StanfordCars(str(root), split="test" if split == "test" else "train", download=False)
    labels = [int(y) for _, y in ds._samples]
    indices = None if split == "test" else holdout_split(labels, split)
    return _wrap("stanfordcars", [str(c) for c in ds.classes], ds, labels, split, indices)


def load_oxfordpet(path: Path, split: str) -> ImageDataset:
    root = _root_of(path, "oxford-iiit-pet")
    layout = (
        f"  {root}/oxford-iiit-pet/images/<Breed_Name>_<n>.jpg\n"
        f"  {root}/oxford-iiit-pet/annotations/{{trainval.txt, test.txt}}\n"
        "    (lines: '<image id> <class 1..37> <species 1..2> <breed id>')"
    )
    ann = "oxford-iiit-pet/annotations"
    needed = f"{ann}/test.txt" if split == "test" else f"{ann}/trainval.txt"
    _require(root, ["oxford-iiit-pet/images", needed], "oxfordpet", layout)
    ds = OxfordIIITPet(str(root), split="test" if split == "test" else "trainval", download=False)
    indices = None if split == "test" else holdout_split(ds._labels, split)
    return _wrap("oxfordpet", _pet_classes(root / ann), ds, ds._labels, split, indices)


def _pet_classes(annotations: Path) -> list[str]:
    # torchvision names only the classes present in the loaded split, which would shift
    # names against labels if a split lacked one; read both lists for a stable table.
    names: dict[int, str] = {}
    for fname in ("trainval.txt", "test.txt"):
        if (annotations / fname).is_file():
            for line in (annotations / fname).read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and not line.startswith("#"):
                    names[int(parts[1]) - 1] = " ".join(p.title() for p in parts[0].rsplit("_", 1)[0].split("_"))
    return [names.get(i, f"class {i}") for i in range(max(names) + 1)] if names else []


LOADERS: dict[str, Callable[[Path, str], ImageDataset]] = {
    "imagefolder": load_imagefolder,
    "cifar10": load_cifar10,
    "caltech101": load_caltech101,
    "flowers102": load_flowers102,
    "stanfordcars": load_stanfordcars,
    "oxfordpet": load_oxfordpet,
}
