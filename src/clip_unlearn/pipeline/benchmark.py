"""Compare every method with the retrain oracle, side by side, on the built-in data.

    out = run_benchmark(params)     # writes metrics/benchmark.json and reports/plots/*.png

One row per (request, method) (benchmark_report.py): BF/AF forget, retain and other-dataset top-1,
seconds, the gate's checks (core/gate.py, params `gate:`): a row's "targets_met" is the verdict
verification would give the same model on the same request; the depth figures (core/depth.py) and,
where the request has an oracle row, each one minus the oracle's. Each run starts from a fresh copy of
the reference model. Two blocks: the named requests of params.yaml (where defaults are tuned, on val)
and a hold-out block drawn by seed (classes, pairs, subgroups, and two-step lineage rows) that nothing
was tuned on. Oracles are retrained once per reference and request, then cached (pipeline/oracles.py).
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
from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256, load_model
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.core.schema import ConfigError, Section
from clip_unlearn.core.splits import cached_split
from clip_unlearn.methods import METHODS
from clip_unlearn.pipeline.benchmark_report import (add_oracle_gaps, depth_plot_rows, format_rows, plot_per_class, row,
                                                   summarize)
from clip_unlearn.pipeline.oracles import cached_record, oracle_model, write_yardstick
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
    # A fixed subset (the first ones drawn) gets the oracle as yardstick: nothing was tuned on it either.
    oracle_classes: int = Field(4, ge=0, description="oracle rows for the first n hold-out class requests")
    oracle_pairs: int = Field(1, ge=0, description="... the first n pairs")
    oracle_subgroups: int = Field(2, ge=0, description="... the first n subgroups")


class BenchmarkConfig(Section):
    classes: dict[str, list[str]] = Field(default_factory=lambda: {
        "digits": ["three", "seven", "nine"], "shapes": ["star", "heart", "arrow"]})
    multi_class: list[ForgetRequest] = Field(default_factory=lambda: [
        ForgetRequest(dataset="digits", classes=["one", "four", "eight"])])
    subgroups: list[ForgetRequest] = Field(default_factory=lambda: [
        ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"}),
        ForgetRequest(dataset="digits", classes=["three"], where={"background": "white"}),
        ForgetRequest(dataset="shapes", classes=["star"], where={"colour": "blue"})])
    class_methods: list[str] = Field(default_factory=lambda: ["auto", "text_edit", "projection", "partial_retrain", "lipschitz",
                                                              "gradient_ascent", "random_labels"])
    subgroup_methods: list[str] = Field(default_factory=lambda: ["auto", "attribute_edit", "standin_subgroup", "subgroup",
                                                                 "gradient_ascent"])
    oracle: Literal["none", "first", "all"] = Field(
        "all", description="retrain-from-scratch oracle on every named request, the first class request, or none")
    oracle_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                    description="training seeds of the oracle (the first is the yardstick)")
    oracle_cache: str = Field("runs/oracles", description="where oracles are kept (pipeline/oracles.py)")
    yardstick: str = Field("metrics/oracle_depth.json", description="the oracles' depth figures, read by certificates")
    summary: str = Field("metrics/benchmark_summary.json", description="shares and depth gaps (DVC metrics)")
    depth_plot: str = Field("reports/benchmark_depth.json", description="depth per row (DVC plots)")
    holdout: HoldoutConfig = HoldoutConfig()
    seed: int = 0
    out: str = "metrics/benchmark.json"
    plots_dir: str = "reports/plots"


def benchmark_requests(cfg) -> list[tuple[ForgetRequest, list[str]]]:
    """(request, methods) pairs: each listed class alone, the multi-class requests, the subgroups; the
    oracle on every one with `oracle: all`, on the first class request with `first`."""
    classes = [ForgetRequest(dataset=d, classes=[c]) for d, cs in cfg.classes.items() for c in cs]
    multi = [ForgetRequest(**r.model_dump()) for r in cfg.multi_class]
    groups = [ForgetRequest(**r.model_dump()) for r in cfg.subgroups]

    def with_oracle(i: int) -> list[str]:
        return ["oracle"] if cfg.oracle == "all" or (cfg.oracle == "first" and i == 0) else []

    return ([(r, list(cfg.class_methods) + with_oracle(i)) for i, r in enumerate(classes)]
            + [(r, list(cfg.class_methods) + (["oracle"] if cfg.oracle == "all" else [])) for r in multi]
            + [(r, list(cfg.subgroup_methods) + (["oracle"] if cfg.oracle == "all" else [])) for r in groups])


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
    """One method on a fresh copy of `base`, judged by the gate on test, depth measured whatever the
    verdict: (model, result, judged)."""
    bundle = copy.deepcopy(base)
    log(f"[benchmark] {name} on {request.describe()}" + (f" after {[e.forgotten for e in lineage]}" if lineage else ""))
    res = unlearn(params, bundle, request, name, lineage=lineage, synthetic=synthetic, log=log, before=before)
    return bundle, res, judge(params, bundle, res, lineage=lineage, depth_always=True)


def _oracle_run(params, base, base_sha, request, seed, log, before=None):
    """The oracle's row: the cached (or retrained) model judged like any method."""
    bundle, record = oracle_model(params, base, base_sha, request, seed, log)
    before = before or request_metrics(base, request, params.data.root, others(params, request))
    after = request_metrics(bundle, request, params.data.root, others(params, request))
    res = {"method": "oracle" if seed == params.benchmark.oracle_seeds[0] else f"oracle-seed{seed}",
           "request": request.model_dump(), "config": {"seed": seed, "steps": record["steps"]}, "data_free": False,
           "lineage": [], "before": before, "after": after, "seconds": record["train_seconds"],
           "info": {k: record.get(k) for k in ("seed", "cached", "threads", "n_train")}}
    return bundle, res, judge(params, bundle, res, depth_always=True)


def _write_json(path: str | Path, content) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(content, indent=1) + "\n")


def run_benchmark(params, log: Callable[[str], None] = print, synthetic_for: Callable | None = None,
                  holdout: bool = True, named: bool = True, oracle_requests_only: bool = False,
                  methods: list[str] | None = None, requests: list[str] | None = None, out: str | None = None) -> dict:
    """`synthetic_for(request, bundle)` returns the ctx.synthetic callable for a request (or None).
    Writes {"rows", "lineage_rows", "summary"} to benchmark.out, with the summary, depth plot and yardstick.
    A restricted run writes its rows to `out` only (never benchmark.out): `named` False, the hold-out
    block alone; `oracle_requests_only`, the requests that have an oracle row and no lineage rows;
    `methods`, only these (name "oracle" for the oracle rows); `requests`, only these (as `describe()`
    writes them, e.g. "shapes:ring+hourglass") and no lineage rows, so that several processes can share
    a benchmark."""
    cfg = params.benchmark
    restricted = not named or oracle_requests_only or methods is not None or requests is not None
    if restricted and (out is None or Path(out) == Path(cfg.out)):
        raise ConfigError(f"a restricted benchmark run (--no-named, --with-oracle, --method, --request) writes "
                          f"elsewhere than {cfg.out}: give it an out path (--out)")
    unknown = sorted(set(methods or ()) - set(METHODS) - {"oracle"})
    if unknown:
        raise ConfigError(f"unknown method {', '.join(unknown)}; `unlearn methods` lists them")
    base = load_model(params.model.dir, device=params.bootstrap.device)
    base_sha = file_sha256(Path(params.model.dir) / WEIGHTS_FILE)
    rows, results = [], []

    def keep(res, judged, block):
        rows.append(row(res, judged["checks"], judged["depth"]) | {"block": block})
        results.append(res)
        if restricted:   # a slice keeps every row as it comes: a stopped run loses only the one in progress
            _write_json(out, {"rows": rows, "partial": True})

    def one(request, name, block, **kw):
        if name == "oracle":
            for seed in cfg.oracle_seeds:
                _, res, judged = _oracle_run(params, base, base_sha, request, seed, log, kw.get("before"))
                keep(res, judged, block)
            return
        synthetic = synthetic_for(request, base) if synthetic_for and name == "lipschitz" else None
        _, res, judged = _run(params, base, request, name, log, synthetic=synthetic, **kw)
        keep(res, judged, block)
        log(format_rows(rows[-1:], header=False))

    def chosen(request: ForgetRequest, names: list[str]) -> list[str]:
        if (oracle_requests_only and "oracle" not in names) or (requests is not None and
                                                                 request.describe() not in requests):
            return []
        return [n for n in names if methods is None or n in methods]

    h = cfg.holdout
    plan = holdout_requests(cfg, params.data.root, list(params.data.datasets)) if holdout else None
    if requests is not None:   # a request the run would not reach is refused before anything runs
        known = [r.describe() for r, _ in benchmark_requests(cfg) if named] + \
            [r.describe() for r in (plan["classes"] + plan["pairs"] + plan["subgroups"] if plan else [])]
        if missing := sorted(set(requests) - set(known)):
            raise ConfigError(f"no benchmark request {', '.join(missing)} in this run; its requests: {', '.join(known)}")
    for request, names in benchmark_requests(cfg) if named else []:
        if names := chosen(request, names):
            before = request_metrics(base, request, params.data.root, others(params, request))
            for name in names:
                one(request, name, "named", before=before)
    lineage_rows = []
    if holdout:
        with_oracle = {r.describe() for r in [*plan["classes"][:h.oracle_classes], *plan["pairs"][:h.oracle_pairs],
                                              *plan["subgroups"][:h.oracle_subgroups]]}
        for request in plan["classes"] + plan["pairs"]:
            block = "holdout-class" if len(request.classes) == 1 else "holdout-multi"
            for name in chosen(request, h.class_methods + (["oracle"] if request.describe() in with_oracle else [])):
                one(request, name, block)
        for request in plan["subgroups"]:
            for name in chosen(request, h.subgroup_methods + (["oracle"] if request.describe() in with_oracle else [])):
                one(request, name, "holdout-subgroup")
        if not oracle_requests_only and requests is None:
            for first, second in plan["lineage"]:
                lineage_rows.append(lineage_row(params, base, first, second, h.lineage_method, log))
    add_oracle_gaps(rows)
    result = {"rows": rows, "lineage_rows": lineage_rows, "summary": summarize(rows, lineage_rows)}
    if restricted:   # the yardstick comes from every cached oracle: `unlearn benchmark --oracles-only`
        _write_json(out, result)
        return result
    write_yardstick(params, base_sha, rows)
    for path, content in ((cfg.out, result), (cfg.summary, result["summary"]), (cfg.depth_plot, depth_plot_rows(rows))):
        _write_json(path, content)
    if cfg.plots_dir:
        plot_per_class(results, Path(cfg.plots_dir))
    return result


def refresh_yardstick(params, log: Callable[[str], None] = print) -> dict:
    """The yardstick (benchmark.yardstick) from the oracles already cached for this reference, without
    the rest of the benchmark: the named requests' and the hold-out subset's, judged on test as the
    benchmark's oracle rows are. Missing or stale ones are listed, never trained (`unlearn benchmark`
    trains them). {"rows", "missing", "path"}."""
    cfg = params.benchmark
    base = load_model(params.model.dir, device=params.bootstrap.device)
    base_sha = file_sha256(Path(params.model.dir) / WEIGHTS_FILE)
    h, seed = cfg.holdout, cfg.oracle_seeds[0]
    plan = holdout_requests(cfg, params.data.root, list(params.data.datasets))
    wanted = [(r, "named") for r, methods in benchmark_requests(cfg) if "oracle" in methods]
    wanted += [(r, "holdout-class") for r in plan["classes"][:h.oracle_classes]]
    wanted += [(r, "holdout-multi") for r in plan["pairs"][:h.oracle_pairs]]
    wanted += [(r, "holdout-subgroup") for r in plan["subgroups"][:h.oracle_subgroups]]
    rows, missing = [], []
    for request, block in wanted:
        if cached_record(params, base, base_sha, request, seed) is None:
            missing.append(request.describe())
            continue
        _, res, judged = _oracle_run(params, base, base_sha, request, seed, log)
        rows.append(row(res, judged["checks"], judged["depth"]) | {"block": block})
    path = write_yardstick(params, base_sha, rows)
    log(f"[benchmark] yardstick from {len(rows)} cached oracles -> {path}; not cached: {', '.join(missing) or 'none'}")
    return {"rows": rows, "missing": missing, "path": str(path)}


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
