"""Data layer: built-in generators, the ImageDataset API and the external loaders."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_unlearn  # noqa: F401  (before torchvision, see clip_unlearn._compat)
from clip_unlearn.core.data import (
    BUILTIN_DATASETS,
    DATASET_KINDS,
    SPLITS,
    ImageDataset,
    generate_builtin,
    load_dataset,
    parse_spec,
)
from clip_unlearn.core.data.builtin import BACKGROUNDS, DIGIT_CLASSES, INKS, SHAPE_CLASSES

SCALE = 0.05


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("builtin")
    for name in BUILTIN_DATASETS:
        generate_builtin(name, root, seed=0, scale=SCALE)
    return root


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_same_seed_same_bytes_other_seed_other_images(name, built, tmp_path):
    again = generate_builtin(name, tmp_path / "a", seed=0, scale=SCALE)
    other = generate_builtin(name, tmp_path / "b", seed=1, scale=SCALE)
    first = built / name
    assert (again / "manifest.jsonl").read_bytes() == (first / "manifest.jsonl").read_bytes()
    assert (again / "meta.json").read_bytes() == (first / "meta.json").read_bytes()
    paths = [it["path"] for it in manifest(first)]
    assert all((again / p).read_bytes() == (first / p).read_bytes() for p in paths)
    shared = [p for p in paths if (other / p).exists()]
    assert shared
    differing = sum((other / p).read_bytes() != (first / p).read_bytes() for p in shared)
    assert differing > 0.9 * len(shared)


def test_regenerate_replaces_atomically(tmp_path):
    generate_builtin("shapes", tmp_path, scale=0.02, seed=0)
    out = generate_builtin("shapes", tmp_path, scale=0.02, seed=3, image_size=24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no temp folders left
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seed"], meta["image_size"], meta["version"]) == (3, 24, 1)
    with Image.open(out / manifest(out)[0]["path"]) as im:
        assert im.size == (24, 24)


def test_digits_splits_by_source(built):
    items = manifest(built / "digits")
    assert [(it["split"], it["path"]) for it in items] == sorted((it["split"], it["path"]) for it in items)
    sources = {s: {it["source"] for it in items if it["split"] == s} for s in SPLITS}
    assert not sources["train"] & sources["val"]
    assert not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    counts = Counter(it["split"] for it in items)
    renders = {"train": 6, "val": 2, "test": 6}
    assert counts == {s: renders[s] * len(sources[s]) for s in SPLITS}
    assert json.loads((built / "digits" / "meta.json").read_text())["counts"] == dict(counts)
    # ~60/20/20 of 5% of the 1797 sklearn digits
    assert 45 <= len(sources["train"]) <= 65 and 15 <= len(sources["test"]) <= 25
    for split in SPLITS:
        assert {it["class"] for it in items if it["split"] == split} == set(DIGIT_CLASSES)
    assert all(DIGIT_CLASSES[it["label"]] == it["class"] for it in items)


def test_shapes_counts_and_attribute_coverage(built):
    items = manifest(built / "shapes")
    per_class = Counter((it["split"], it["class"]) for it in items)
    assert per_class == {(s, c): n for s, n in (("train", 30), ("val", 3), ("test", 10)) for c in SHAPE_CLASSES}
    meta = json.loads((built / "shapes" / "meta.json").read_text())
    assert set(meta["attributes"]) == {"colour", "size", "texture", "background"}
    for attr, values in meta["attributes"].items():
        assert {it["attrs"][attr] for it in items} == set(values), attr
    train = [it for it in items if it["split"] == "train" and it["class"] == "star"]
    assert max(Counter(it["attrs"]["size"] for it in train).values()) <= 20  # balanced, not random


def test_digits_attribute_coverage_and_readability(built):
    items = manifest(built / "digits")
    test = [it for it in items if it["split"] == "test"]
    assert {(it["class"], it["attrs"]["ink"]) for it in test} == {(c, i) for c in DIGIT_CLASSES for i in INKS}
    assert {it["attrs"]["background"] for it in items} == set(BACKGROUNDS)
    pairs = {(it["attrs"]["ink"], it["attrs"]["background"]) for it in items}
    assert ("yellow", "white") not in pairs


def test_generate_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="digits, shapes"):
        generate_builtin("mnist", tmp_path)


# ---------------------------------------------------------------- ImageDataset


def test_images_and_tensors(built):
    ds = load_dataset("digits", split="val", root=built)
    assert isinstance(ds, torch.utils.data.Dataset) and ds.split == "val"
    image, label = ds[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    assert label == ds.labels[0] and 0 <= label < 10
    assert ds[-1][1] == ds.labels[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    x, y = ds.tensors()
    assert x.shape == (len(ds), 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == ds.labels
    assert torch.equal(x[0].permute(1, 2, 0), torch.from_numpy(np.array(image)))
    assert ds.tensors() is ds.tensors()  # cached
    small, _ = ds.tensors(image_size=16)
    assert small.shape == (len(ds), 3, 16, 16)


@pytest.mark.parametrize("ink,channel", [("red", 0), ("green", 1), ("blue", 2)])
def test_ink_colour_is_visible(built, ink, channel):
    ds = load_dataset("digits", root=built).select(where={"ink": ink})
    assert len(ds) >= 10
    for i in range(len(ds)):
        px = np.asarray(ds[i][0], dtype=np.float64).reshape(-1, 3)
        bg = np.asarray(BACKGROUNDS[ds.item_attrs(i)["background"]], dtype=np.float64)
        strokes = px[np.linalg.norm(px - bg, axis=1) > 80]
        assert len(strokes) > 20  # the digit covers a fair part of the image
        mean = strokes.mean(axis=0)
        assert all(mean[channel] > mean[c] + 40 for c in range(3) if c != channel), (i, mean)


def test_select_subgroup_and_invert(built):
    ds = load_dataset("digits", split="test", root=built)
    assert ds.classes == DIGIT_CLASSES and ds.attributes["ink"] == list(INKS)
    sub = ds.select(["seven"], {"ink": "red"})
    assert len(sub) > 0 and sub.classes == ds.classes and sub.name == "digits"
    assert set(sub.labels) == {7}
    assert all(sub.item_attrs(i)["ink"] == "red" for i in range(len(sub)))
    rest = ds.select(["seven"], {"ink": "red"}, invert=True)
    assert len(sub) + len(rest) == len(ds)
    assert not any(y == 7 and rest.item_attrs(i)["ink"] == "red" for i, y in enumerate(rest.labels))
    sevens = ds.select([7])
    assert len(sevens) == ds.labels.count(7) == len(ds.select(["seven"]))
    assert len(ds.select(where={"ink": ["red", "blue"]})) == len(ds.select(where={"ink": "red"})) + len(
        ds.select(where={"ink": "blue"})
    )
    # select on a selection stays within it; subset keeps metadata
    assert len(sevens.select(where={"ink": "red"})) == len(sub)
    part = ds.subset([3, 1])
    assert part.labels == [ds.labels[3], ds.labels[1]] and part.attributes == ds.attributes
    assert part.item_attrs(0) == ds.item_attrs(3)


def test_select_errors(built):
    ds = load_dataset("digits", split="test", root=built)
    with pytest.raises(ValueError, match="'seven'") as err:
        ds.select(["sevn"])
    assert "did you mean" in str(err.value) and "zero" in str(err.value)
    with pytest.raises(ValueError, match="purple.*red, green, blue"):
        ds.select(where={"ink": "purple"})
    with pytest.raises(ValueError, match="'ink'"):
        ds.select(where={"inc": "red"})
    with pytest.raises(ValueError, match="out of range"):
        ds.select([10])


def test_load_errors(built, tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_builtin"):
        load_dataset("shapes", root=tmp_path)
    with pytest.raises(ValueError, match="train, val, test"):
        load_dataset("digits", split="valid", root=built)
    with pytest.raises(ValueError, match="imagefolder"):
        load_dataset("imgfolder:/x")
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ValueError, match="path"):
        parse_spec("cifar10")
    assert parse_spec("shapes") == ("shapes", None)
    assert parse_spec("cifar10:/data/c") == ("cifar10", "/data/c")
    assert set(DATASET_KINDS) >= {"digits", "shapes", "imagefolder", "oxfordpet"}


# ---------------------------------------------------------------- external loaders


def save_image(path: Path, value: int, size: tuple[int, int] = (20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    Image.new("RGB", size, (value, 255 - value, 7)).save(path, format=fmt)


def first_red(ds: ImageDataset, i: int) -> int:
    return int(np.asarray(ds[i][0])[0, 0, 0])


def test_imagefolder_with_splits(tmp_path):
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        for cls in ("cat_face", "dog"):
            for k in range(n):
                save_image(tmp_path / split / cls / f"{k}.png", 10 * k)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"imagefolder:{tmp_path}", split="train")
    assert ds.classes == ["cat face", "dog"] and len(ds) == 10
    assert ds.labels == [0] * 5 + [1] * 5 and ds.attributes == {} and ds.item_attrs(0) == {}
    assert ds[0][0].size == (20, 20)
    assert len(load_dataset(f"imagefolder:{tmp_path}", split="val")) == 4
    assert len(load_dataset(f"imagefolder:{tmp_path}", split="test")) == 6
    with pytest.raises(ValueError, match="has no attributes"):
        ds.select(where={"ink": "red"})


def test_imagefolder_without_splits(tmp_path):
    for cls in ("apple", "pear"):
        for k in range(20):
            save_image(tmp_path / cls / f"img{k:02d}.png", k + (100 if cls == "pear" else 0))
    parts = {s: load_dataset(f"imagefolder:{tmp_path}", split=s) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [28, 6, 6]
    values = {s: {(first_red(d, i), d.labels[i]) for i in range(len(d))} for s, d in parts.items()}
    assert len(set().union(*values.values())) == 40  # disjoint and complete
    assert parts["test"].labels.count(0) == 3 and parts["test"].classes == ["apple", "pear"]
    again = load_dataset(f"imagefolder:{tmp_path}", split="test")
    assert {(first_red(again, i), again.labels[i]) for i in range(len(again))} == values["test"]


def test_imagefolder_missing_val_and_missing_root(tmp_path):
    for split in ("train", "test"):
        for k in range(10):
            save_image(tmp_path / split / "a" / f"{k}.jpg", 20 * k)
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    val = load_dataset(f"imagefolder:{tmp_path}", "val")
    assert (len(train), len(val)) == (9, 1)
    with pytest.raises(FileNotFoundError, match="<class>"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = np.zeros((4, 3, 32, 32), dtype=np.uint8)
        data[:, 0] = np.arange(4)[:, None, None] + 10 * b  # red channel encodes batch and row
        labels = [(4 * b + k) % 10 for k in range(4)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(4, -1), "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES}, f)
    test = load_dataset(f"cifar10:{tmp_path}", "test")
    assert test.classes == CIFAR_NAMES and len(test) == 4 and test.labels == [0, 1, 2, 3]
    assert test[2][0].size == (32, 32) and first_red(test, 2) == 52
    train, val = (load_dataset(f"cifar10:{folder}", s) for s in ("train", "val"))  # sub-folder is accepted
    assert (len(train), len(val)) == (10, 10)  # 2 train images per class: one held out
    assert sorted(val.labels) == list(range(10))
    seen = {first_red(d, i) for d in (train, val) for i in range(len(d))}
    assert len(seen) == 20
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.*\n.*cifar-10-batches-py"):
        load_dataset(f"cifar10:{tmp_path}", "train")


def test_caltech101(tmp_path):
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    (cats / "BACKGROUND_Google").mkdir(parents=True)
    for c, name in enumerate(["Faces_easy", "accordion", "yin_yang"]):
        for k in range(1, 11):
            save_image(cats / name / f"image_{k:04d}.jpg", 100 * c, size=(40, 30))
    parts = {s: load_dataset(f"caltech101:{tmp_path}", s) for s in SPLITS}
    assert parts["test"].classes == ["faces easy", "accordion", "yin yang"]
    assert [len(parts[s]) for s in SPLITS] == [18, 6, 6]
    assert Counter(parts["val"].labels) == {0: 2, 1: 2, 2: 2}
    image, label = parts["test"][5]
    assert image.size == (40, 30) and label == 2
    assert parts["test"].tensors(image_size=16)[0].shape == (6, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="101_ObjectCategories"):
        load_dataset(f"caltech101:{tmp_path / 'empty'}")


def test_flowers102(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    labels = [1, 1, 2, 2, 102, 102, 5, 5]  # 1-based, image i+1 has labels[i]
    for i in range(len(labels)):
        save_image(base / "jpg" / f"image_{i + 1:05d}.jpg", 30 * i, size=(50, 40))
    savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    split_ids = {"trnid": [[1, 3, 5]], "valid": [[2, 7]], "tstid": [[4, 6, 8]]}
    savemat(base / "setid.mat", {k: np.array(v) for k, v in split_ids.items()})
    test = load_dataset(f"flowers102:{tmp_path}", "test")
    assert len(test.classes) == 102 and test.classes[0] == "pink primrose"
    assert test.labels == [1, 101, 4] and test[1][0].size == (50, 40)
    assert test.classes[test.labels[1]] == "blackberry lily"
    assert len(load_dataset(f"flowers102:{tmp_path}", "val")) == 2
    (base / "setid.mat").unlink()
    with pytest.raises(FileNotFoundError, match="setid.mat"):
        load_dataset(f"flowers102:{tmp_path}", "train")


def test_stanfordcars(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Volvo 240 Sedan 1993"]
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})

    def annotations(folder: str, n: int) -> np.ndarray:
        records = np.zeros((1, n), dtype=[("fname", object), ("class", object)])
        for k in range(n):
            save_image(base / folder / f"{k:05d}.jpg", 20 * k, size=(60, 30))
            records[0, k] = (f"{k:05d}.jpg", np.array([[k % 3 + 1]], dtype=np.uint8))
        return records

    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annotations("cars_train", 9)})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations("cars_test", 4)})
    test = load_dataset(f"stanfordcars:{tmp_path}", "test")
    assert test.classes == names and len(test) == 4 and test.labels == [0, 1, 2, 0]
    assert test[1][0].size == (60, 30)
    train, val = (load_dataset(f"stanfordcars:{tmp_path}", s) for s in ("train", "val"))
    assert (len(train), len(val)) == (6, 3)
    assert not {first_red(train, i) for i in range(6)} & {first_red(val, i) for i in range(3)}


def test_oxfordpet(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    rows = {  # image id, class (1-based), species (1 cat, 2 dog)
        "trainval": [("Abyssinian_1", 1, 1), ("Abyssinian_2", 1, 1)]
        + [("american_bulldog_1", 2, 2), ("american_bulldog_2", 2, 2)],
        "test": [("Abyssinian_3", 1, 1), ("american_bulldog_3", 2, 2)],
    }
    for split, entries in rows.items():
        lines = [f"{name} {cls} {species} 1" for name, cls, species in entries]
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for name, cls, _ in entries:
            save_image(base / "images" / f"{name}.jpg", 40 * cls, size=(36, 48))
    test = load_dataset(f"oxfordpet:{tmp_path}", "test")
    assert test.classes == ["Abyssinian", "American Bulldog"] and test.labels == [0, 1]
    assert test[1][0].size == (36, 48)
    train, val = (load_dataset(f"oxfordpet:{tmp_path}", s) for s in ("train", "val"))
    assert (len(train), len(val)) == (2, 2) and sorted(val.labels) == [0, 1]
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        load_dataset(f"oxfordpet:{tmp_path / 'elsewhere'}", "train")
