"""Retrain oracles, cached: the reference model retrained from scratch without a request's data is
deterministic, so it is trained once per (reference weights, request, seed) and kept.

    bundle, info = oracle_model(params, reference, request, seed=0)    # trains only on a cache miss
    folder = oracle_dir(params, reference_sha, request, seed)          # <cache>/<sha16>/<request>-seed<s>/
    write_yardstick(params, reference_sha, rows)                       # the oracles' depth, for certificates
    yardstick(params, base_sha, request)                               # {"kind", "values": {metric: recall}}

A cache folder is a save_model folder plus oracle.json, which holds what the model depends on (the
reference's weights hash, the request, the seed, the training recipe and datasets): an entry whose
oracle.json does not match is retrained, never reused. Cheap for the 8 M-parameter reference
(~10 min on 2 cores, ~1 on a GPU), impossible for a web-scale CLIP: a yardstick, not a method.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import torch

from clip_unlearn.core.data import BUILTIN_DATASETS
from clip_unlearn.core.depth import METRICS as DEPTH_METRICS
from clip_unlearn.core.models import WEIGHTS_FILE, ClipBundle, file_sha256, load_model, save_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.train import BootstrapConfig, train_reference
from clip_unlearn.methods.oracle import oracle_train_sets

_NOT_RECIPE = ("threads", "device", "log_every")   # how it ran, not what it is


def oracle_key(reference: ClipBundle, reference_sha: str, request: ForgetRequest, seed: int) -> dict:
    boot = BootstrapConfig.model_validate(reference.meta.get("bootstrap") or {})
    return {"reference_sha256": reference_sha, "request": request.describe(), "seed": seed, "steps": boot.steps,
            "bootstrap": {k: v for k, v in boot.model_copy(update={"seed": seed}).model_dump().items()
                          if k not in _NOT_RECIPE},
            "datasets": reference.meta.get("datasets") or list(BUILTIN_DATASETS)}


def oracle_dir(params, reference_sha: str, request: ForgetRequest, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", request.describe())
    return Path(params.benchmark.oracle_cache) / reference_sha[:16] / f"{slug}-seed{seed}"


def cached_record(params, reference: ClipBundle, reference_sha: str, request: ForgetRequest, seed: int) -> dict | None:
    """The cached oracle's oracle.json when it was made with these settings, else None."""
    meta = oracle_dir(params, reference_sha, request, seed) / "oracle.json"
    if not meta.is_file():
        return None
    key = oracle_key(reference, reference_sha, request, seed)
    record = json.loads(meta.read_text())
    return record if {k: record.get(k) for k in key} == key else None


def oracle_model(params, reference: ClipBundle, reference_sha: str, request: ForgetRequest, seed: int = 0,
                 log: Callable[[str], None] = print) -> tuple[ClipBundle, dict]:
    """The oracle for `request` (retrained with the reference's recipe, training seed `seed`) and its
    record (oracle.json: the key plus train_seconds, threads, n_train)."""
    key = oracle_key(reference, reference_sha, request, seed)
    folder = oracle_dir(params, reference_sha, request, seed)
    meta = folder / "oracle.json"
    record = cached_record(params, reference, reference_sha, request, seed)
    if record is not None and record.get("weights_sha256") in (None, file_sha256(folder / WEIGHTS_FILE)):
        log(f"[oracle] {request.describe()} seed {seed}: cached in {folder}")
        return load_model(str(folder), device=params.bootstrap.device), record | {"cached": True}
    if meta.is_file():
        log(f"[oracle] {folder} was made for other settings; retraining")
    log(f"[oracle] retraining without {request.describe()} (seed {seed}, {key['steps']} steps)")
    boot = BootstrapConfig.model_validate({**key["bootstrap"], "threads": torch.get_num_threads(),
                                           "device": params.bootstrap.device})
    sets = oracle_train_sets(request, params.data.root, key["datasets"])
    t0 = time.perf_counter()
    bundle, _ = train_reference(sets, boot, arch=reference.arch, log=lambda _: None)
    seconds = round(time.perf_counter() - t0, 1)
    save_model(bundle, folder, meta={"bootstrap": boot.model_dump(), "datasets": key["datasets"]})
    record = key | {"train_seconds": seconds, "threads": torch.get_num_threads(), "device": str(bundle.device),
                    "n_train": {s.name: len(s) for s in sets}, "weights_sha256": file_sha256(folder / WEIGHTS_FILE)}
    meta.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return bundle, record | {"cached": False}


def write_yardstick(params, reference_sha: str, rows: list[dict]) -> Path:
    """The oracles' depth figures (test split) from benchmark rows, for certificates: per request, and
    the most any oracle of a named class request reached (the yardstick of requests without one)."""
    oracles = [r for r in rows if r["method"] == "oracle"]
    named = [r for r in oracles if r["block"] == "named" and "[" not in r["forget"] and "+" not in r["forget"]]
    out = {"reference_sha256": reference_sha,
           "requests": {r["forget"]: {m: r.get(f"depth_{m}") for m in DEPTH_METRICS} for r in oracles},
           "named_class_max": {m: max((r[f"depth_{m}"] for r in named if r.get(f"depth_{m}") is not None),
                                      default=None) for m in DEPTH_METRICS}}
    path = Path(params.benchmark.yardstick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return path


def yardstick(params, base_sha: str, request: ForgetRequest) -> dict | None:
    """What a model retrained without the request's data reaches on each depth figure: the oracle of this
    very request when the benchmark retrained one from these base weights, else the most any oracle of
    a named class request reached."""
    path = Path(params.benchmark.yardstick)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("reference_sha256") == base_sha and request.describe() in data.get("requests", {}):
        return {"kind": "the model retrained without it", "values": data["requests"][request.describe()]}
    if request.is_subgroup or not any(v is not None for v in data.get("named_class_max", {}).values()):
        return None
    return {"kind": "the most any model retrained without a benchmark class reached",
            "values": data["named_class_max"]}
