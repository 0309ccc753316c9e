"""Create, load and save CLIP models (open_clip), offline and pickle-free.

    from clip_unlearn.core.models import load_model, save_model
    bundle = load_model("clip-ref-tiny")                      # random init, our reference arch
    bundle = load_model("ViT-B-32", pretrained="openai")      # needs the hub (not offline)
    bundle = load_model("ViT-B-32", pretrained="/w/b32.safetensors")
    bundle = load_model("local-dir:models/reference")         # what save_model writes
    bundle = load_model("s3://bucket/models/reference")       # same layout in a bucket
    bundle = load_model("models:/clip-ref@champion")          # a registered version (MLFLOW_TRACKING_URI)
    save_model(bundle, "models/reference")                    # safetensors + open_clip_config.json

A saved model is an open_clip `local-dir:` folder: `open_clip_config.json` (model_cfg,
preprocess_cfg, and our own metadata) and `open_clip_model.safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import load_file, save_file

import clip_unlearn  # noqa: F401  (patches torchvision before open_clip imports it)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
REFERENCE_ARCH = "clip-ref-tiny"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class ClipBundle:
    """A model with what is needed to feed it: tokenizer and image normalization."""

    model: torch.nn.Module
    tokenizer: object
    arch: str
    model_cfg: dict
    image_size: int
    mean: tuple = OPENAI_MEAN
    std: tuple = OPENAI_STD
    meta: dict = field(default_factory=dict)  # provenance written next to the weights

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device(device)


def _image_size(model_cfg: dict) -> int:
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return size[0] if isinstance(size, (list, tuple)) else int(size)


def _check_weights_file(path: Path) -> None:
    # Pickles run code on load: only safetensors, or torch's weights-only loader for .pt/.pth/.bin.
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: unsupported checkpoint format {path.suffix!r}; use .safetensors "
                         "(or a .pt/.pth/.bin state dict, loaded with weights_only=True).")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")


def load_model(name: str, pretrained: str | None = None, device: str = "auto",
               cache_dir: str | Path | None = None) -> ClipBundle:
    """Load a CLIP by open_clip architecture name (+ pretrained tag or file), `local-dir:`, a
    folder written by `save_model`, an `s3://` URI of such a folder, or a registered version
    `models:/NAME/VERSION` / `models:/NAME@ALIAS` (its weights checked against the registry)."""
    dev = resolve_device(device)
    if name.startswith("models:/"):
        name = "local-dir:" + str(registered_dir(name, cache_dir))
    elif name.startswith("s3://"):
        name = "local-dir:" + str(download_s3_dir(name, cache_dir))
    elif Path(name).is_dir() and (Path(name) / CONFIG_FILE).is_file():
        name = "local-dir:" + name
    meta: dict = {}
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; expected a folder written by save_model "
                                    "(open_clip_config.json + open_clip_model.safetensors).")
        cfg = json.loads(cfg_path.read_text())
        meta = cfg.get("clip_unlearn", {})
        model_cfg = cfg["model_cfg"]
        arch = meta.get("arch", folder.name)
        weights = folder / WEIGHTS_FILE
        _check_weights_file(weights)
        model = _model_from_cfg(model_cfg)
        _load_weights(model, weights)
        pre = cfg.get("preprocess_cfg", {})
        mean, std = tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD))
    else:
        arch = name
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown model {arch!r}: give an open_clip architecture "
                             f"(e.g. {REFERENCE_ARCH}, ViT-B-32), local-dir:PATH, a saved folder or s3://bucket/prefix.")
        if pretrained and (Path(pretrained).suffix or os.sep in pretrained):
            _check_weights_file(Path(pretrained))
        # open_clip loads .safetensors as such and other files with torch.load(weights_only=True).
        model = open_clip.create_model(arch, pretrained=pretrained, device="cpu")
        model_cfg = open_clip.get_model_config(arch)
        mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
        std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
        meta = {"arch": arch, "pretrained": pretrained}
    model = model.to(dev).eval()
    return ClipBundle(model=model, tokenizer=_tokenizer(arch, model_cfg), arch=arch, model_cfg=model_cfg, image_size=_image_size(model_cfg), mean=mean, std=std, meta=meta)


def _tokenizer(arch: str, model_cfg: dict):
    if arch in open_clip.list_models():
        return open_clip.get_tokenizer(arch)
    return open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"].get("context_length", 77))


def _model_from_cfg(model_cfg: dict) -> torch.nn.Module:
    cls = CustomTextCLIP if "hf_model_name" in model_cfg.get("text_cfg", {}) else CLIP
    return cls(**model_cfg)


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as e:  # truncated / not a safetensors file
            raise ValueError(f"{path}: not a readable safetensors file ({e}); the file is corrupt or "
                             "truncated: restore it from the registry or re-run the step that wrote it.") from e
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the config (missing {missing[:5]}, unexpected {unexpected[:5]}).")


def save_model(bundle: ClipBundle, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Write `bundle` as an open_clip local-dir folder, atomically (temp folder, then rename)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE))
    info = {**bundle.meta, **(meta or {}), "arch": bundle.arch, "sha256": file_sha256(tmp / WEIGHTS_FILE)}
    cfg = {"model_cfg": bundle.model_cfg,
           "preprocess_cfg": {"size": bundle.image_size, "mean": list(bundle.mean), "std": list(bundle.std),
                              "interpolation": "bicubic", "resize_mode": "shortest"},
           "clip_unlearn": info}
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    bundle.meta = info
    return out


# Which tower a parameter belongs to (open_clip's CLIP): the image tower is `visual.*`.
TEXT_TOWER = ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection")


def tower_of(name: str) -> str:
    return "image tower" if name.startswith("visual.") else "text tower" if name.startswith(TEXT_TOWER) else "other"


def changed_parts(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, dict]:
    """Per tower: how many parameter tensors differ between two models of one architecture, of how many."""
    old = dict(before.named_parameters())
    out: dict[str, dict] = {}
    for name, p in after.named_parameters():
        cell = out.setdefault(tower_of(name), {"changed": 0, "tensors": 0})
        cell["tensors"] += 1
        cell["changed"] += int(not torch.equal(p.detach().cpu(), old[name].detach().cpu()))
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_s3_dir(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy every object under an s3:// prefix into a local cache folder (boto3; the endpoint
    comes from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for S3-compatible servers)."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    base = Path(cache_dir or Path.home() / ".cache" / "clip_unlearn" / "s3")
    dest = (base / bucket / prefix).resolve()
    if not str(dest).startswith(str(base.resolve())):
        raise ValueError(f"{uri}: the prefix escapes the cache folder")
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for o in page.get("Contents", [])]
    if not keys:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    for key in keys:
        target = (dest / key[len(prefix) + 1:]).resolve()
        if not str(target).startswith(str(dest)):
            raise ValueError(f"{uri}: object key {key!r} escapes its prefix")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    return dest


REGISTERED_ARTIFACT = "artifacts/clip_model"   # the open_clip folder inside a registered MLflow model


def mlflow_model_dir(name: str, version: str, dest: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the open_clip folder of registered version `version` of `name` (an MLflow model)
    into `dest` (open_clip_config.json + open_clip_model.safetensors directly in it)."""
    from mlflow.artifacts import download_artifacts  # heavy: MLflow's client

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        got = Path(download_artifacts(artifact_uri=f"models:/{name}/{version}/{REGISTERED_ARTIFACT}", dst_path=tmp,
                                      tracking_uri=tracking_uri, registry_uri=tracking_uri))
        dest.mkdir(parents=True, exist_ok=True)
        for f in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.move(str(got / f), str(dest / f))
    return dest


def registered_dir(uri: str, cache_dir: str | Path | None = None) -> Path:
    """models:/NAME/VERSION or models:/NAME@ALIAS -> a local folder. Versions that are MLflow models
    come through MLflow's artifact store; older versions (a bare s3:// folder) from S3. The weights
    must match the version's `weights_sha256` tag."""
    from mlflow import MlflowClient  # heavy: MLflow's client

    ref = uri[len("models:/"):]
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(*ref.split("@", 1)) if "@" in ref else \
            client.get_model_version(*ref.rsplit("/", 1))
    except (TypeError, ValueError):
        raise ValueError(f"{uri}: give models:/NAME/VERSION or models:/NAME@ALIAS") from None
    dest = Path(cache_dir or Path.home() / ".cache" / "clip_unlearn" / "registry") / mv.name / str(mv.version)
    if str(mv.source).startswith("models:/"):
        mlflow_model_dir(mv.name, mv.version, dest)
    elif str(mv.source).startswith("s3://"):
        dest = download_s3_dir(mv.source, cache_dir)
    else:
        raise ValueError(f"{uri}: version {mv.version} has source {mv.source}, neither an MLflow model nor s3://")
    want, got = (mv.tags or {}).get("weights_sha256"), file_sha256(dest / WEIGHTS_FILE)
    if got != want:
        raise ValueError(f"{uri}: version {mv.version}'s weights have sha256 {got[:16]}..., the registry recorded "
                         f"{str(want)[:16]}...: changed or corrupted; nothing was loaded")
    return dest
