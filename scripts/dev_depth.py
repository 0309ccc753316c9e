"""Depth on the val split: one method on one named request, with its accuracy and the four attacks.

    python scripts/dev_depth.py digits:seven partial_retrain                  # params.yaml's config
    python scripts/dev_depth.py digits:seven partial_retrain '{"distill_weight": 1.0}'
    python scripts/dev_depth.py shapes:star oracle-cache                      # a cached retrain oracle
    python scripts/dev_depth.py shapes:star oracle-seed:1                     # the oracle of seed 1 (trained on a miss)
    python scripts/dev_depth.py shapes:star base                              # the reference itself

Reads params.yaml (data root, reference folder, benchmark.oracle_cache); threads: TORCH_THREADS
(default 2). Appends one JSON line to runs/dev_depth.jsonl and prints it. Nothing here reads a
test split: this is where partial_retrain's defaults and the gate's depth limits were chosen.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from clip_unlearn.core.depth import DepthConfig, measure_depth
from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256, load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.methods import UnlearnContext, get_method, run_method
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.oracles import oracle_dir, oracle_model

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
req, method = ForgetRequest.parse(sys.argv[1]), sys.argv[2]
override = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
p = load_params("params.yaml")
root, ref = p.data.root, p.model.dir
others = [d for d in ("digits", "shapes") if d != req.dataset]
base = load_model(ref, device="cpu")
before = request_metrics(base, req, root, others, split="val")
if method == "base":
    bundle, seconds, cfg = base, 0.0, {}
elif method == "oracle-cache":
    folder = oracle_dir(p, file_sha256(Path(ref) / WEIGHTS_FILE), req, seed=0)
    bundle, seconds, cfg = load_model(str(folder), device="cpu"), None, {"folder": str(folder)}
elif method.startswith("oracle-seed:"):
    bundle, record = oracle_model(p, base, file_sha256(Path(ref) / WEIGHTS_FILE), req, seed=int(method.split(":")[1]))
    seconds, cfg = record["train_seconds"], {"cached": record["cached"]}
else:
    m = get_method(method)
    known = p.methods.get(method)
    cfg = m.config_cls.model_validate({**(known.model_dump() if known else {}), **override})
    bundle = base
    t0 = time.perf_counter()
    run_method(bundle, method, UnlearnContext(request=req, data_root=root, others=others, configs=p.methods,
                                              gate=p.gate, log=lambda s: None), cfg)
    seconds, cfg = round(time.perf_counter() - t0, 1), cfg.model_dump()
after = request_metrics(bundle, req, root, others, split="val")
depth = measure_depth(bundle, req, root, DepthConfig(), split="val")
row = {"request": req.describe(), "method": method, "override": override, "threads": torch.get_num_threads(),
       "seconds": seconds, "forget": round(after["forget_top1"], 4),
       "retain_drop": round(before["retain_top1"] - after["retain_top1"], 4),
       "other_drop": round(before["other_top1"] - after["other_top1"], 4),
       **{k: round(depth[k], 4) for k in ("prototypes", "probe", "relearn_attack", "paraphrase")}}
Path("runs").mkdir(exist_ok=True)
with open("runs/dev_depth.jsonl", "a") as fh:
    fh.write(json.dumps(row) + "\n")
print(json.dumps(row))
