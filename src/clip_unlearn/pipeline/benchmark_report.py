"""The benchmark's report: one row per (request, method), depth beside the oracle's, the summary
shares and the plots.

    rows = [row(result, judged["checks"], judged["depth"]), ...]
    add_oracle_gaps(rows)                 # depth_<metric>_vs_oracle = method - oracle, per request
    summarize(rows, lineage_rows)         # shares per block and method; mean depth gaps
    print(format_rows(rows)); print(format_depth(rows)); print(format_summary(out))
"""

from __future__ import annotations

from pathlib import Path

from clip_unlearn.core.depth import METRICS as DEPTH_METRICS
from clip_unlearn.core.request import ForgetRequest


def row(result: dict, checks: list[dict], depth: dict | None = None) -> dict:
    """One benchmark row: BF/AF, seconds, the gate's checks (targets_met = the verdict), the depth figures."""
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
    r |= {f"depth_{m}": (depth or {}).get(m) for m in DEPTH_METRICS}
    r["changed"] = result.get("changed")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}


def add_oracle_gaps(rows: list[dict]) -> None:
    """For every request with an oracle row: each row's depth minus the oracle's, per metric."""
    oracles = {r["forget"]: r for r in rows if r["method"] == "oracle"}
    for r in rows:
        o = oracles.get(r["forget"])
        for m in DEPTH_METRICS:
            mine, theirs = r.get(f"depth_{m}"), (o or {}).get(f"depth_{m}")
            r[f"depth_{m}_vs_oracle"] = None if mine is None or theirs is None else round(mine - theirs, 4)


def depth_plot_rows(rows: list[dict]) -> list[dict]:
    """Depth per (method, request), flat, for `dvc plots` (dvc.yaml: reports/benchmark_depth.json)."""
    return [{"row": f"{r['method']} {r['forget']}", "block": r["block"],
             **{m: r.get(f"depth_{m}") for m in DEPTH_METRICS}} for r in rows]


def depth_gaps(rows: list[dict]) -> dict:
    """Per block and method, over the requests with an oracle row: the mean of method - oracle per
    metric, and how many of them are within 0.10 of the oracle on every metric."""
    out: dict = {}
    for r in rows:
        gaps = [r.get(f"depth_{m}_vs_oracle") for m in DEPTH_METRICS]
        if r["method"] == "oracle" or any(g is None for g in gaps):
            continue
        cell = out.setdefault(r["block"], {}).setdefault(r["method"], {"n": 0, "within_0.10": 0, "sum": {}})
        cell["n"] += 1
        cell["within_0.10"] += int(all(g <= 0.10 + 1e-9 for g in gaps))
        for m, g in zip(DEPTH_METRICS, gaps):
            cell["sum"][m] = cell["sum"].get(m, 0.0) + g
    for block in out.values():
        for cell in block.values():
            cell["mean"] = {m: round(v / cell["n"], 4) for m, v in cell.pop("sum").items()}
    return out


def summarize(rows: list[dict], lineage_rows: list[dict]) -> dict:
    """{"blocks": per block and method, the share of requests meeting every target and mean seconds,
    with the best data-free share per hold-out class / subgroup request; "oracle_seconds";
    "depth_vs_oracle" (depth_gaps); "lineage" when there are lineage rows}."""
    blocks: dict = {}
    for r in rows:
        cell = blocks.setdefault(r["block"], {}).setdefault(r["method"], {"n": 0, "met": 0, "seconds": 0.0})
        cell["n"] += 1
        cell["met"] += int(r["targets_met"])
        cell["seconds"] += r["seconds"]
    for block in blocks.values():
        for cell in block.values():
            cell["share"] = round(cell["met"] / cell["n"], 3)
            cell["mean_seconds"] = round(cell.pop("seconds") / cell["n"], 2)
    for block in ("holdout-class", "holdout-subgroup"):
        by_request: dict[str, bool] = {}
        for r in rows:
            if r["block"] == block and r.get("data_free") and r["method"] != "auto":
                by_request[r["forget"]] = by_request.get(r["forget"], False) or r["targets_met"]
        if by_request:
            blocks[block]["best data-free"] = {"n": len(by_request), "met": sum(by_request.values()),
                                               "share": round(sum(by_request.values()) / len(by_request), 3)}
    out = {"blocks": blocks, "oracle_seconds": [r["seconds"] for r in rows if r["method"] == "oracle"],
           "depth_vs_oracle": depth_gaps(rows)}
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


def format_depth(rows: list[dict]) -> str:
    """Depth per row (recall of what was forgotten after each attack) and, where the request has an
    oracle row, method minus oracle."""
    lines = [f"{'method':17} {'forget':32} " + " ".join(f"{m:>16}" for m in DEPTH_METRICS)]
    for r in rows:
        cells = []
        for m in DEPTH_METRICS:
            v, g = r.get(f"depth_{m}"), r.get(f"depth_{m}_vs_oracle")
            cells.append(f"{'—' if v is None else f'{v:.3f}':>7}" + (f" ({g:+.3f})" if g is not None else " " * 9))
        lines.append(f"{r['method']:17} {r['forget']:32} " + " ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def format_summary(out: dict) -> str:
    """Share of requests meeting every target, per block and method, with mean seconds."""
    lines = [f"{'block':18} {'method':16} {'met':>7} {'share':>6} {'mean s':>8}"]
    for block, cells in out["summary"]["blocks"].items():
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
    for block, cells in (out["summary"].get("depth_vs_oracle") or {}).items():
        for method, c in cells.items():
            gaps = ", ".join(f"{m} {v:+.3f}" for m, v in c["mean"].items())
            lines.append(f"depth vs oracle {block:18} {method:16} within 0.10 {c['within_0.10']}/{c['n']}; mean {gaps}")
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
