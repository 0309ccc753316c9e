"""Commands that run methods outside the erasure job: forget, synthesize, benchmark, methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from clip_unlearn.cli import errors
from clip_unlearn.cli.options import PARAMS


def forget(params: str = PARAMS,
           method: Optional[str] = typer.Option(None, help="method name (default: forget.method)"),
           dataset: Optional[str] = typer.Option(None, help="dataset of the request"),
           cls: Optional[list[str]] = typer.Option(None, "--class", help="class to forget (repeatable)"),
           where: Optional[list[str]] = typer.Option(None, help="subgroup filter attr=value (repeatable)"),
           model: Optional[str] = typer.Option(None, help="base model (default: model.dir)"),
           out: str = typer.Option("runs/forget/model", help="where to save the unlearned model"),
           report: str = typer.Option("runs/forget/result.json", help="BF/AF metrics JSON")):
    """Forget classes or a subgroup with one method; print before/after and the gate; save the model."""
    from clip_unlearn.core.models import load_model, save_model
    from clip_unlearn.core.request import ForgetRequest
    from clip_unlearn.pipeline.benchmark_report import format_depth, format_rows, row
    from clip_unlearn.pipeline.unlearn import judge, unlearn

    p = errors.params(params)
    f = p.forget
    conds = errors.where_option(where)
    request = ForgetRequest(dataset=dataset or f.dataset, classes=cls or f.classes, where=conds if where else f.where)
    bundle = load_model(model or p.model.dir, device=p.bootstrap.device)
    result = unlearn(p, bundle, request, method or f.method)
    judged = judge(p, bundle, result, depth_always=True)
    save_model(bundle, out, meta={"unlearning": {k: result[k] for k in ("method", "request", "config")}})
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(result | {"checks": judged["checks"]}, indent=1) + "\n")
    r = row(result, judged["checks"], judged["depth"])
    typer.echo(format_rows([r]) + "\n\n" + format_depth([r]))
    typer.echo(f"model: {out}\nreport: {report}")
    if not judged["passed"]:
        raise typer.Exit(1)


def synthesize(params: str = PARAMS,
               dataset: Optional[str] = typer.Option(None, help="dataset (default: forget.dataset)"),
               cls: Optional[list[str]] = typer.Option(None, "--class", help="class (repeatable)"),
               model: Optional[str] = typer.Option(None, help="model (default: model.dir)"),
               out: str = typer.Option("runs/synthetic", help="output folder")):
    """Synthetic forget images by model inversion (class names only): tensors, grid.png, summary.json."""
    from clip_unlearn.core.models import load_model
    from clip_unlearn.core.request import ForgetRequest
    from clip_unlearn.core.splits import cached_split
    from clip_unlearn.methods.synthetic import make_synthetic_set, save_synthetic

    p = errors.params(params)
    request = ForgetRequest(dataset=dataset or p.forget.dataset, classes=cls or p.forget.classes)
    request.check(cached_split(request.dataset, "train", p.data.root).classes, {})
    bundle = load_model(model or p.model.dir, device=p.bootstrap.device)
    syn = make_synthetic_set(bundle, request, p.data.root, p.methods["lipschitz"].synthesis, seed=p.benchmark.seed)
    folder = save_synthetic(syn, out, bundle.mean, bundle.std)
    typer.echo(f"wrote {folder} ({len(syn.labels)} images; grid: {folder / 'grid.png'})")


def benchmark(params: str = PARAMS,
              holdout: bool = typer.Option(True, help="also run the hold-out block (benchmark.holdout)"),
              named: bool = typer.Option(True, help="run the named requests (--no-named: the hold-out block "
                                                    "alone; needs --out)"),
              oracles_only: bool = typer.Option(False, "--oracles-only",
                                                help="only refresh the yardstick (benchmark.yardstick) from the "
                                                     "oracles already cached; trains nothing"),
              with_oracle: bool = typer.Option(False, "--with-oracle",
                                               help="only the requests that have an oracle row (named and the "
                                                    "hold-out subset); no lineage rows; needs --out"),
              method: Optional[list[str]] = typer.Option(None, "--method",
                                                         help="only this method (repeatable; 'oracle' for the "
                                                              "oracle rows); needs --out"),
              request: Optional[list[str]] = typer.Option(None, "--request",
                                                          help="only this request, e.g. digits:two or "
                                                               "shapes:ring+hourglass (repeatable); needs --out"),
              out: Optional[str] = typer.Option(None, help="rows of a restricted run (--no-named, --with-oracle, --method, "
                                                   "--request)")):
    """Run every method (and the oracle) on the benchmark requests; write metrics/benchmark.json."""
    from clip_unlearn.core.request import ForgetRequest
    from clip_unlearn.pipeline.benchmark import refresh_yardstick, run_benchmark
    from clip_unlearn.pipeline.benchmark_report import format_depth, format_rows, format_summary

    p = errors.params(params)
    if oracles_only:
        res = refresh_yardstick(p)
        typer.echo("\n" + format_depth(res["rows"]))
        typer.echo(f"\nwrote {res['path']}" + (f"; not cached: {', '.join(res['missing'])}" if res["missing"] else ""))
        return
    res = run_benchmark(p, holdout=holdout, named=named, oracle_requests_only=with_oracle, methods=method or None,
                        requests=[ForgetRequest.parse(r).describe() for r in request] if request else None, out=out)
    typer.echo("\n" + format_rows(res["rows"]))
    typer.echo("\n" + format_depth(res["rows"]))
    typer.echo("\n" + format_summary(res))
    typer.echo(f"\nwrote {out or p.benchmark.out}")


def methods():
    """List the registered unlearning methods."""
    from clip_unlearn.methods import METHODS

    for name, m in sorted(METHODS.items()):
        typer.echo(f"{name:<16} {'data-free' if m.data_free else 'uses data':<10} {m.summary}")
