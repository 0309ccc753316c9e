"""The reference-model steps, as plain functions on params and paths (no Prefect, no MLflow).

    params = load_params("params.yaml")
    make_data(params)                   # data/digits, data/shapes
    train_and_save(params)              # models/reference (safetensors + config + loss history)
    evaluate_model(params)              # metrics/reference.json + reports/reference_eval.json
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from clip_unlearn.core.data import generate_builtin, load_dataset
from clip_unlearn.core.models import load_model, save_model
from clip_unlearn.core.train import train_reference
from clip_unlearn.core.zero_shot import evaluate
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.provenance import REPO, dvc_lock_md5s, folder_md5


def dataset_is_current(params: Params, name: str) -> bool:
    meta = Path(params.data.root) / name / "meta.json"
    if not meta.is_file():
        return False
    m = json.loads(meta.read_text())
    return (m.get("seed"), m.get("image_size"), m.get("scale")) == \
        (params.data.seed, params.data.image_size, params.data.scale)


def make_dataset(params: Params, name: str) -> Path:
    """Generate one built-in dataset unless an identical one is already there."""
    if dataset_is_current(params, name):
        return Path(params.data.root) / name
    return generate_builtin(name, params.data.root, seed=params.data.seed,
                            image_size=params.data.image_size, scale=params.data.scale)


def make_data(params: Params) -> list[Path]:
    return [make_dataset(params, name) for name in params.data.datasets]


def timing_path(params: Params) -> Path:
    """Timings and host of the last training, beside the model folder (models/reference.timing.json):
    not in it, since the folder is a DVC output that must be byte-identical for the same seeds."""
    model_dir = Path(params.model.dir)
    return model_dir.with_name(model_dir.name + ".timing.json")


def train_and_save(params: Params, log: Callable[[str], None] = print) -> Path:
    train_sets = [load_dataset(name, "train", params.data.root) for name in params.data.datasets]
    bundle, history = train_reference(train_sets, params.bootstrap, arch=params.model.arch, log=log)
    seconds = bundle.meta.pop("train_seconds", None)
    out = save_model(bundle, params.model.dir, meta={"bootstrap": params.bootstrap.model_dump()})
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history]
    (out / "train_history.json").write_text(json.dumps(losses, indent=1) + "\n")
    record = {"model_dir": str(out), "weights_sha256": bundle.meta["sha256"], "train_seconds": seconds,
              "host": platform.node(), "device": str(bundle.device), "threads": torch.get_num_threads(),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "history": history}
    timing_path(params).write_text(json.dumps(record, indent=1) + "\n")
    log(lock_check(out))
    return out


def lock_check(model_dir: str | Path, lock: Path = REPO / "dvc.lock") -> str:
    """One line: does this model folder reproduce the committed reference (dvc.lock's models/reference)?"""
    got, want = folder_md5(model_dir), dvc_lock_md5s(lock).get("models/reference")
    if want is None:
        return f"reference folder md5 {got} (no dvc.lock entry to compare with)"
    if got == want:
        return f"reference folder md5 {got}: the committed one (dvc.lock's)"
    return (f"reference folder md5 {got}, dvc.lock's {want}: other weights (other params, or a CPU code "
            "path the pins in clip_unlearn._compat do not cover: docs/bootstrap.md, Determinism)")


def evaluate_model(params: Params, model_dir: str | None = None, datasets: list[str] | None = None,
                   out: str | None = None, details: str | None = None) -> dict:
    """Zero-shot evaluation on each dataset's split; writes the summary metrics and the details."""
    bundle = load_model(model_dir or params.model.dir, device=params.bootstrap.device)
    results = {name: evaluate(bundle, load_dataset(name, params.evaluation.split, params.data.root),
                              batch_size=params.evaluation.batch_size)
               for name in (datasets or params.data.datasets)}
    summary = {name: {"top1": round(r["top1"], 4), "mean_per_class_recall": round(r["mean_per_class_recall"], 4)}
               for name, r in results.items()}
    for path, content in ((out or params.evaluation.out, summary), (details or params.evaluation.details, results)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return results


def format_table(results: dict) -> str:
    rows = [f"{'dataset':<10} {'n':>6} {'top1':>7} {'mean/class':>11}"]
    for name, r in results.items():
        rows.append(f"{name:<10} {r['n']:>6} {r['top1']:>7.4f} {r['mean_per_class_recall']:>11.4f}")
    return "\n".join(rows)


def model_is_current(params: Params) -> bool:
    """True when params.model.dir holds a model trained with exactly these settings."""
    cfg = Path(params.model.dir) / "open_clip_config.json"
    if not cfg.is_file():
        return False
    meta = json.loads(cfg.read_text()).get("clip_unlearn", {})
    return meta.get("bootstrap") == params.bootstrap.model_dump() and \
        meta.get("datasets") == list(params.data.datasets) and meta.get("arch") == params.model.arch
