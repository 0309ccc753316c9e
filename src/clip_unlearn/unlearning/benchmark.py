"""Compare every method and the retrain oracle side by side on the built-in data.

    rows = run_benchmark(params)     # writes metrics/benchmark.json and reports/plots/*.png

One row per (request, method): BF/AF forget, retain and other-dataset top-1 (fractions),
seconds, and which targets were met. Each run starts from a fresh copy of the reference model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

from clip_unlearn.models import load_model
from clip_unlearn.unlearning.evaluate import request_metrics
from clip_unlearn.unlearning.request import ForgetRequest
from clip_unlearn.unlearning.runner import run_method
from clip_unlearn.unlearning.targets import check_targets


def benchmark_requests(cfg) -> list[tuple[ForgetRequest, list[str]]]:
    """(request, methods) pairs: each listed class alone, the multi-class requests, the subgroups.
    The oracle (a full retraining, ~9 minutes each on 2 cores) runs on the first class request
    with `oracle: first`, on every request with `all`."""
    classes = [ForgetRequest(dataset=d, classes=[c]) for d, cs in cfg.classes.items() for c in cs]
    multi = [ForgetRequest(**r.model_dump()) for r in cfg.multi_class]
    groups = [ForgetRequest(**r.model_dump()) for r in cfg.subgroups]

    def with_oracle(i: int) -> list[str]:
        return ["oracle"] if cfg.oracle == "all" or (cfg.oracle == "first" and i == 0) else []

    return ([(r, list(cfg.class_methods) + with_oracle(i)) for i, r in enumerate(classes)]
            + [(r, list(cfg.class_methods)) for r in multi]
            + [(r, list(cfg.subgroup_methods) + (["oracle"] if cfg.oracle == "all" else []))
               for r in groups])


def row(result: dict, checks: dict[str, bool]) -> dict:
    req, b, a = ForgetRequest(**result["request"]), result["before"], result["after"]
    r = {"method": result["method"], "dataset": req.dataset, "forget": req.describe(),
         "forget_top1_before": b["forget_top1"], "forget_top1_after": a["forget_top1"],
         "retain_top1_before": b["retain_top1"], "retain_top1_after": a["retain_top1"],
         "other_top1_before": b["other_top1"], "other_top1_after": a["other_top1"],
         "seconds": result["seconds"]}
    if req.is_subgroup:
        r |= {"subgroup_rest_top1_before": b["subgroup_rest_top1"], "subgroup_rest_top1_after": a["subgroup_rest_top1"],
              "other_classes_top1_before": b["other_classes_top1"], "other_classes_top1_after": a["other_classes_top1"]}
    r["targets_met"] = all(checks.values())
    r["targets"] = checks
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}


def run_benchmark(params, log: Callable[[str], None] = print, synthetic_for: Callable | None = None) -> list[dict]:
    """`synthetic_for(request, bundle)` returns the ctx.synthetic callable for a request (or None)."""
    cfg = params.benchmark
    base = load_model(params.model.dir, device=params.bootstrap.device)
    rows, results = [], []
    for request, methods in benchmark_requests(cfg):
        others = [d for d in params.data.datasets if d != request.dataset]
        before = request_metrics(base, request, params.data.root, others)
        synthetic = synthetic_for(request, base) if synthetic_for else None
        for name in methods:
            bundle = copy.deepcopy(base)
            method_cfg = params.methods[name]
            log(f"[benchmark] {name} on {request.describe()}")
            res = run_method(bundle, request, name, method_cfg, params.data.root, others, seed=cfg.seed,
                             synthetic=synthetic, log=log, before=before)
            checks = check_targets(res["before"], res["after"], params.targets, request.is_subgroup)
            rows.append(row(res, checks))
            results.append(res)
            log(format_rows(rows[-1:], header=False))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(rows, indent=1) + "\n")
    if cfg.plots_dir:
        plot_per_class(results, Path(cfg.plots_dir))
    return rows


def format_rows(rows: list[dict], header: bool = True) -> str:
    cols = ["method", "forget", "forget_top1_before", "forget_top1_after", "retain_top1_before",
            "retain_top1_after", "other_top1_before", "other_top1_after", "seconds", "targets_met"]
    short = ["method", "forget", "forget BF", "forget AF", "retain BF", "retain AF", "other BF", "other AF",
             "seconds", "targets"]
    width = [15, 30, 9, 9, 9, 9, 8, 8, 8, 7]
    fmt = lambda vals: " ".join(f"{str(v):<{w}}" if i < 2 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(vals, width)))
    lines = [fmt(short)] if header else []
    for r in rows:
        vals = [r[c] for c in cols]
        vals = [f"{v:.3f}" if isinstance(v, float) and c != "seconds" else (f"{v:.1f}" if c == "seconds" else v)
                for v, c in zip(vals, cols)]
        vals[-1] = "yes" if r["targets_met"] else "NO"
        lines.append(fmt(vals))
    return "\n".join(lines)


def plot_per_class(results: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per request: per-class accuracy before and after each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    by_request: dict[str, list[dict]] = {}
    for res in results:
        by_request.setdefault(ForgetRequest(**res["request"]).describe(), []).append(res)
    paths = []
    for name, group in by_request.items():
        classes = list(group[0]["before"]["per_class"])
        series = [("before", group[0]["before"]["per_class"])] + [(r["method"], r["after"]["per_class"]) for r in group]
        fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.9), 3.2))
        width = 0.8 / len(series)
        for i, (label, acc) in enumerate(series):
            ax.bar([j + i * width for j in range(len(classes))], [acc[c] or 0 for c in classes], width, label=label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(classes))], classes, rotation=30, fontsize=8)
        ax.set_ylabel("top-1")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"per-class zero-shot accuracy: forget {name}", fontsize=9)
        ax.legend(fontsize=7, ncol=len(series), loc="lower left")
        fig.tight_layout()
        path = out_dir / (name.replace(":", "_").replace("+", "-").replace("[", "_").replace("]", "")
                          .replace("=", "-").replace(",", "_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
