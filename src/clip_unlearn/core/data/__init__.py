"""Datasets for clip-unlearn: generated built-ins and user data behind one loader API.

    from clip_unlearn.core.data import generate_builtin, load_dataset

    generate_builtin("digits", "data")                     # writes data/digits/
    test = load_dataset("digits", split="test", root="data")
    forget = test.select(["seven"], where={"ink": "red"})
    x, y = forget.tensors(image_size=224)

    load_dataset("imagefolder:/path/to/folder", "train")   # also cifar10:, caltech101:,
                                                           # flowers102:, stanfordcars:, oxfordpet:
"""

from clip_unlearn.core.data.builtin import BUILTIN_DATASETS, SPLITS, generate_builtin
from clip_unlearn.core.data.datasets import DATASET_KINDS, ImageDataset, load_builtin, load_dataset, parse_spec

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_KINDS",
    "SPLITS",
    "ImageDataset",
    "generate_builtin",
    "load_builtin",
    "load_dataset",
    "parse_spec",
]
