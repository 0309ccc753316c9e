"""Dev subgroups: where `subgroup`'s and `standin_subgroup`'s defaults are chosen, on the val split only.

    python scripts/dev_subgroups.py                      # subgroup with the defaults of params.yaml
    python scripts/dev_subgroups.py '{"top_k": 8}'       # a variant (any SubgroupConfig field)
    METHOD=standin_subgroup python scripts/dev_subgroups.py '{"margin": 0.02}'

Draws N (default 8) subgroup requests by seed 7 among classes that neither the named nor the
hold-out subgroups of `params.yaml: benchmark` use, trains the method once per request, then scores
the soup of each rule on val: every subgroup target, and the relearning check (on val). Prints
one line per (request, rule) and a summary; nothing here reads a test split.
"""

import copy
import json
import os
import random
import sys
import time

import torch

from clip_unlearn.core.assurance import relearn_check
from clip_unlearn.core.gate import accuracy_checks, passed
from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.splits import cached_split
from clip_unlearn.methods import soup
from clip_unlearn.pipeline.benchmark import draw_subgroups, holdout_requests
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.unlearn import unlearn

RULES = {"retain": ("retain", 0.0), "deep50": ("deepest", 0.5), "deep25": ("deepest", 0.25), "deep0": ("deepest", 0.0)}


def dev_requests(p, n: int, seed: int = 7) -> list[ForgetRequest]:
    bench, root, datasets = p.benchmark, p.data.root, p.data.datasets
    used = {(r.dataset, c) for r in [*bench.subgroups, *holdout_requests(bench, root, datasets)["subgroups"]]
            for c in r.classes}
    meta = {d: cached_split(d, "train", root) for d in datasets}
    pool = [(d, c) for d in datasets for c in meta[d].classes if (d, c) not in used]
    return draw_subgroups(random.Random(seed), pool, meta, n)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    p = load_params("params.yaml")
    base = load_model(p.model.dir, device="cpu")
    method = os.environ.get("METHOD", "subgroup")
    cfg = {**p.methods[method].model_dump(), **(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})}
    kept = {}
    blend = soup.blend_

    def capture(model, unlearned, original, alpha):   # keep both ends of the soup (soup_grid) to re-blend per rule
        kept["u"], kept["o"] = unlearned, original
        return blend(model, unlearned, original, alpha)

    soup.blend_ = capture
    out = []
    for req in dev_requests(p, int(os.environ.get("N", 8))):
        others = [d for d in p.data.datasets if d != req.dataset]
        before = request_metrics(base, req, p.data.root, others, split="val")
        b = copy.deepcopy(base)
        t = time.time()
        res = unlearn(p, b, req, method, config=p.methods[method].model_validate(cfg), log=lambda s: None)
        secs, scored = time.time() - t, {}
        for name, (rule, margin) in RULES.items():
            alpha = soup.choose_soup_alpha(res["info"]["soup_grid"], cfg["forget_target"], rule, margin)
            if alpha not in scored:
                blend(b.model, kept["u"], kept["o"], alpha)
                a = request_metrics(b, req, p.data.root, others, split="val")
                scored[alpha] = {
                    "forget": a["forget_top1"], "met": passed(accuracy_checks(before, a, p.gate, True)),
                    "rest": (a["subgroup_rest_top1"] - before["subgroup_rest_top1"]) * 100,
                    "other_classes": (a["other_classes_top1"] - before["other_classes_top1"]) * 100,
                    "other": (a["other_top1"] - before["other_top1"]) * 100,
                    "relearn": relearn_check(b, req, p.data.root, p.assurance, split="val")["forget_top1_max"]}
            r = {"request": req.describe(), "rule": name, "alpha": alpha, "seconds": secs, **scored[alpha]}
            out.append(r)
            print(f"{r['request']:34s} {name:7s} alpha {alpha:.2f} forget {before['forget_top1']:.3f}->{r['forget']:.3f} "
                  f"rest {r['rest']:+.1f} other classes {r['other_classes']:+.1f} other {r['other']:+.1f} "
                  f"met {r['met']} relearn {r['relearn']:.3f} ({secs:.0f} s)", flush=True)
    for name in RULES:
        rs = [r for r in out if r["rule"] == name]
        print(f"{name:7s} met {sum(r['met'] for r in rs)}/{len(rs)}  met+relearn "
              f"{sum(r['met'] and r['relearn'] <= p.gate.relearn_forget_max for r in rs)}/{len(rs)}  "
              f"mean relearn peak {sum(r['relearn'] for r in rs) / len(rs):.3f}")


if __name__ == "__main__":
    main()
