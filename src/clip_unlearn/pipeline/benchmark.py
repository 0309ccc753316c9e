"""Compare every method and the retrain oracle side by side on the built-in data.

    out = run_benchmark(params)     # writes metrics/benchmark.json and reports/plots/*.png

One row per (request, method): BF/AF forget, retain and other-dataset top-1 (fractions),
seconds, and the gate's checks (core/gate.py, params `gate:`): a row's "targets_met" is the verdict
verification would give the same model on the same request. Each run starts from a fresh copy of the reference model.
Two blocks: the named requests of params.yaml (where defaults are tuned, on val) and a hold-out
block drawn by seed (classes, pairs, subgroups, and two-step lineage rows) that nothing was tuned on.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from clip_unlearn.core.gate import forget_limit
from clip_unlearn.core.measure import request_metrics
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.schema import Section
from clip_unlearn.core.splits import cached_split
from clip_unlearn.pipeline.unlearn import gate_in_force, judge, others, unlearn


class HoldoutConfig(Section):
    """Requests drawn by `seed` from the classes the benchmark above does not name: no default was
    tuned on them (hyperparameters are chosen on the named requests, val split)."""
    seed: int = 2026
    n_classes: int = Field(8, ge=0, description="single-class requests")
    n_pairs: int = Field(4, ge=0, description="two-class requests (same dataset)")
    n_subgroups: int = Field(5, ge=0, description="one class restricted by one attribute value")
    n_lineage: int = Field(3, ge=0, description="erase A, then B from that version; A re-measured")
    class_methods: list[str] = Field(default_factory=lambda: ["auto", "text_edit", "projection", "lipschitz"])
    subgroup_methods: list[str] = Field(default_factory=lambda: ["auto", "attribute_edit", "standin_subgroup", "subgroup"])
    lineage_method: str = "auto"
    oracle: bool = Field(False, description="also retrain the oracle on the first hold-out class request (~9 min)")


class BenchmarkConfig(Section):
    classes: dict[str, list[str]] = Field(default_factory=lambda: {
        "digits": ["three", "seven", "nine"], "shapes": ["star", "heart", "arrow"]})
    multi_class: list[ForgetRequest] = Field(default_factory=lambda: [
        ForgetRequest(dataset="digits", classes=["one", "four", "eight"])])
    subgroups: list[ForgetRequest] = Field(default_factory=lambda: [
        ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"}),
        ForgetRequest(dataset="digits", classes=["three"], where={"background": "white"}),
        ForgetRequest(dataset="shapes", classes=["star"], where={"colour": "blue"})])
    class_methods: list[str] = Field(default_factory=lambda: ["auto", "text_edit", "projection", "lipschitz",
                                                              "gradient_ascent", "random_labels"])
    subgroup_methods: list[str] = Field(default_factory=lambda: ["auto", "attribute_edit", "standin_subgroup", "subgroup",
                                                                 "gradient_ascent"])
    oracle: Literal["none", "first", "all"] = Field(
        "first", description="retrain-from-scratch oracle on the first class request, on all, or on none")
    holdout: HoldoutConfig = HoldoutConfig()
    seed: int = 0
    out: str = "metrics/benchmark.json"
    plots_dir: str = "reports/plots"




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


def row(result: dict, checks: list[dict]) -> dict:
    req, b, a = ForgetRequest(**result["request"]), result["before"], result["after"]
    r = {"method": result["method"], "dataset": req.dataset, "forget": req.describe(),
         "forget_top1_before": b["forget_top1"], "forget_top1_after": a["forget_top1"],
         "retain_top1_before": b["retain_top1"], "retain_top1_after": a["retain_top1"],
         "other_top1_before": b["other_top1"], "other_top1_after": a["other_top1"],
         "seconds": result["seconds"]}
    if req.is_subgroup:
        r |= {"subgroup_rest_top1_before": b["subgroup_rest_top1"], "subgroup_rest_top1_after": a["subgroup_rest_top1"],
              "other_classes_top1_before": b["other_classes_top1"], "other_classes_top1_after": a["other_classes_top1"]}
    r["data_free"] = result.get("data_free")
    if "chosen" in result.get("info", {}):
        r["chosen"] = result["info"]["chosen"]
        r["attempts"] = [{"method": a["method"], "passed_val": a.get("passed_val"),
                          "failed": a.get("failed") or a.get("skipped")} for a in result["info"]["attempts"]]
    r["targets_met"] = all(c["passed"] for c in checks)
    r["targets"] = {c["name"]: c["passed"] for c in checks}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}


def draw_subgroups(rng: random.Random, pool: list[tuple[str, str]], meta: dict, n: int) -> list[ForgetRequest]:
    """n subgroup requests: classes drawn from pool ((dataset, class) pairs), then per class one
    attribute and one of its values (meta: dataset -> its train split, for the attribute lists)."""
    out = []
    for d, c in rng.sample(pool, min(n, len(pool))):
        key = rng.choice(sorted(meta[d].attributes))
        out.append(ForgetRequest(dataset=d, classes=[c], where={key: rng.choice(meta[d].attributes[key])}))
    return out


def holdout_requests(cfg, data_root: str, datasets: list[str]) -> dict[str, list]:
    """The hold-out block: requests drawn by cfg.holdout.seed among classes the named benchmark
    (on which defaults are tuned) does not use. {"classes", "pairs", "subgroups": [ForgetRequest],
    "lineage": [(A, B)]}."""
    h = cfg.holdout
    rng = random.Random(h.seed)
    named = {(d, c) for d, cs in cfg.classes.items() for c in cs}
    named |= {(r.dataset, c) for r in [*cfg.multi_class, *cfg.subgroups] for c in r.classes}
    meta = {d: cached_split(d, "train", data_root) for d in datasets}
    pool = [(d, c) for d in datasets for c in meta[d].classes if (d, c) not in named]
    singles = rng.sample(pool, min(h.n_classes, len(pool)))
    every_pair = [(d, a, b) for i, (d, a) in enumerate(pool) for d2, b in pool[i + 1:] if d2 == d]
    pairs = [ForgetRequest(dataset=d, classes=[a, b]) for d, a, b in rng.sample(every_pair, min(h.n_pairs, len(every_pair)))]
    groups = draw_subgroups(rng, pool, meta, h.n_subgroups)
    lineage = []
    for _ in range(h.n_lineage):
        (da, ca), (db, cb) = rng.sample(pool, 2)
        lineage.append((ForgetRequest(dataset=da, classes=[ca]), ForgetRequest(dataset=db, classes=[cb])))
    return {"classes": [ForgetRequest(dataset=d, classes=[c]) for d, c in singles], "pairs": pairs,
            "subgroups": groups, "lineage": lineage}


def _run(params, base, request, name, log, before=None, synthetic=None, lineage=()):
    """One method on a fresh copy of `base`, judged by the gate on test: (model, result, judged)."""
    bundle = copy.deepcopy(base)
    log(f"[benchmark] {name} on {request.describe()}" + (f" after {[e.forgotten for e in lineage]}" if lineage else ""))
    res = unlearn(params, bundle, request, name, lineage=lineage, synthetic=synthetic, log=log, before=before)
    return bundle, res, judge(params, bundle, res, lineage=lineage)


def run_benchmark(params, log: Callable[[str], None] = print, synthetic_for: Callable | None = None,
                  holdout: bool = True) -> dict:
    """`synthetic_for(request, bundle)` returns the ctx.synthetic callable for a request (or None).
    Writes {"rows", "holdout_rows", "lineage_rows", "summary"} to benchmark.out."""
    cfg = params.benchmark
    base = load_model(params.model.dir, device=params.bootstrap.device)
    rows, results = [], []

    def one(request, name, block, **kw):
        synthetic = synthetic_for(request, base) if synthetic_for and name == "lipschitz" else None
        _, res, judged = _run(params, base, request, name, log, synthetic=synthetic, **kw)
        rows.append(row(res, judged["checks"]) | {"block": block})
        results.append(res)
        log(format_rows(rows[-1:], header=False))
        return res

    for request, methods in benchmark_requests(cfg):
        before = request_metrics(base, request, params.data.root, others(params, request))
        for name in methods:
            one(request, name, "named", before=before)
    lineage_rows = []
    if holdout:
        h = cfg.holdout
        plan = holdout_requests(cfg, params.data.root, list(params.data.datasets))
        for i, request in enumerate(plan["classes"] + plan["pairs"]):
            block = "holdout-class" if len(request.classes) == 1 else "holdout-multi"
            for name in h.class_methods + (["oracle"] if h.oracle and i == 0 else []):
                one(request, name, block)
        for request in plan["subgroups"]:
            for name in h.subgroup_methods:
                one(request, name, "holdout-subgroup")
        for first, second in plan["lineage"]:
            lineage_rows.append(lineage_row(params, base, first, second, h.lineage_method, log))
    out = {"rows": rows, "lineage_rows": lineage_rows, "summary": summarize(rows, lineage_rows)}
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(out, indent=1) + "\n")
    if cfg.plots_dir:
        plot_per_class(results, Path(cfg.plots_dir))
    return out


def lineage_row(params, base, first: ForgetRequest, second: ForgetRequest, method: str, log) -> dict:
    """Erase `first`, then `second` from that version; `first`'s forget top-1 (test) on the second
    version. ok: it stayed within its limit, or the second version fails verification naming it."""
    v2, res1, _ = _run(params, base, first, method, log)
    limit = forget_limit(gate_in_force(params), first.is_subgroup)
    lineage = [Earlier(request_id="A", forgotten=first.describe(), limit=limit, version="2")]
    _, res2, judged = _run(params, v2, second, method, log, lineage=lineage)
    value = res2["after"]["lineage"][first.describe()]
    named = any(c["name"] == "lineage:A" and not c["passed"] for c in judged["checks"])
    r = {"method": method, "first": first.describe(), "second": second.describe(),
         "first_forget_after_first": round(res1["after"]["forget_top1"], 4), "first_forget_after_second": round(value, 4),
         "limit": limit, "held": value <= limit, "second_verdict": "passed" if judged["passed"] else "failed",
         "failed_naming_first": named, "seconds": round(res1["seconds"] + res2["seconds"], 3)}
    r["ok"] = bool(r["held"] or named)
    log(f"[benchmark] lineage {r['first']} -> {r['second']}: {r['first']} at {value:.3f} (limit {limit}); "
        f"{'ok' if r['ok'] else 'NOT OK'}")
    return r


def summarize(rows: list[dict], lineage_rows: list[dict]) -> dict:
    """Per block and method: share of requests meeting every target, mean seconds; best data-free
    share per hold-out class / subgroup request; the oracle's seconds."""
    out: dict = {}
    for r in rows:
        cell = out.setdefault(r["block"], {}).setdefault(r["method"], {"n": 0, "met": 0, "seconds": 0.0})
        cell["n"] += 1
        cell["met"] += int(r["targets_met"])
        cell["seconds"] += r["seconds"]
    for block in out.values():
        for cell in block.values():
            cell["share"] = round(cell["met"] / cell["n"], 3)
            cell["mean_seconds"] = round(cell.pop("seconds") / cell["n"], 2)
    for block in ("holdout-class", "holdout-subgroup"):
        by_request: dict[str, bool] = {}
        for r in rows:
            if r["block"] == block and r.get("data_free") and r["method"] != "auto":
                by_request[r["forget"]] = by_request.get(r["forget"], False) or r["targets_met"]
        if by_request:
            out[block]["best data-free"] = {"n": len(by_request), "met": sum(by_request.values()),
                                            "share": round(sum(by_request.values()) / len(by_request), 3)}
    oracle = [r["seconds"] for r in rows if r["method"] == "oracle"]
    out["oracle_seconds"] = oracle
    if lineage_rows:
        out["lineage"] = {"n": len(lineage_rows), "ok": sum(r["ok"] for r in lineage_rows),
                          "share": round(sum(r["ok"] for r in lineage_rows) / len(lineage_rows), 3)}
    return out


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


def format_summary(out: dict) -> str:
    """Share of requests meeting every target, per block and method, with mean seconds."""
    lines = [f"{'block':18} {'method':16} {'met':>7} {'share':>6} {'mean s':>8}"]
    for block, cells in out["summary"].items():
        if not isinstance(cells, dict) or block == "lineage":
            continue
        for method, c in cells.items():
            lines.append(f"{block:18} {method:16} {c['met']:>3}/{c['n']:<3} {c['share']:>6.2f} "
                         f"{c.get('mean_seconds', float('nan')):>8.1f}")
    if "lineage" in out["summary"]:
        lin = out["summary"]["lineage"]
        lines.append(f"{'lineage rows':18} {'':16} {lin['ok']:>3}/{lin['n']:<3} {lin['share']:>6.2f}")
    for r in out.get("lineage_rows", []):
        lines.append(f"  {r['method']}: {r['first']} then {r['second']}: {r['first']} "
                     f"{r['first_forget_after_first']:.3f} -> {r['first_forget_after_second']:.3f} "
                     f"(limit {r['limit']}), second {r['second_verdict']}{' naming the first' if r['failed_naming_first'] else ''}")
    if out["summary"].get("oracle_seconds"):
        lines.append(f"oracle seconds: {out['summary']['oracle_seconds']}")
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
