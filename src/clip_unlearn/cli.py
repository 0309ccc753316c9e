"""The `unlearn` command line.

    unlearn bootstrap            # data -> reference model -> zero-shot table (Prefect flow)
    unlearn data                 # DVC stage: generate the built-in datasets
    unlearn train-reference      # DVC stage: train the reference model
    unlearn evaluate             # DVC stage: zero-shot evaluation -> metrics/reference.json
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

import clip_unlearn  # noqa: F401
from clip_unlearn.config import ConfigError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="clip-unlearn: erase classes or subgroups from CLIP models and prove it.")
PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file")


def _params(path: str):
    try:
        return load_params(path)
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)


@app.command()
def data(params: str = PARAMS):
    """Generate the built-in datasets (digits, shapes) under data.root."""
    from clip_unlearn.reference import make_data

    for path in make_data(_params(params)):
        typer.echo(f"wrote {path}")


@app.command("train-reference")
def train_reference(params: str = PARAMS):
    """Train the reference CLIP from scratch on the built-in training splits."""
    from clip_unlearn.reference import train_and_save

    typer.echo(f"saved {train_and_save(_params(params))}")


@app.command()
def evaluate(params: str = PARAMS,
             model: Optional[str] = typer.Option(None, help="model dir, local-dir:, s3:// or open_clip name"),
             dataset: Optional[list[str]] = typer.Option(None, help="dataset spec (repeatable)"),
             out: Optional[str] = typer.Option(None, help="summary JSON path")):
    """Zero-shot evaluation (template ensemble, top-1, mean per-class recall, per class/subgroup)."""
    from clip_unlearn.reference import evaluate_model, format_table

    results = evaluate_model(_params(params), model_dir=model, datasets=dataset, out=out)
    typer.echo(format_table(results))


@app.command()
def bootstrap(params: str = PARAMS, force_train: bool = typer.Option(False, help="retrain even if current")):
    """Run the bootstrap flow: data -> reference model (if needed) -> evaluation table."""
    _params(params)
    from flows.bootstrap import bootstrap as bootstrap_flow
    from clip_unlearn.reference import format_table

    out = bootstrap_flow(params_path=params, force_train=force_train)
    typer.echo(f"\nreference model: {out['model_dir']}\n")
    typer.echo(format_table(out["results"]))


@app.command()
def forget(params: str = PARAMS,
           method: Optional[str] = typer.Option(None, help="method name (default: forget.method)"),
           dataset: Optional[str] = typer.Option(None, help="dataset of the request"),
           cls: Optional[list[str]] = typer.Option(None, "--class", help="class to forget (repeatable)"),
           where: Optional[list[str]] = typer.Option(None, help="subgroup filter attr=value (repeatable)"),
           model: Optional[str] = typer.Option(None, help="base model (default: model.dir)"),
           out: str = typer.Option("runs/forget/model", help="where to save the unlearned model"),
           report: str = typer.Option("runs/forget/result.json", help="BF/AF metrics JSON")):
    """Forget classes or a subgroup with one method; print before/after; save the model."""
    import json
    from pathlib import Path

    from clip_unlearn.models import load_model, save_model
    from clip_unlearn.unlearning import ForgetRequest, run_method
    from clip_unlearn.unlearning.benchmark import format_rows, row
    from clip_unlearn.unlearning.targets import check_targets

    p = _params(params)
    f = p.forget
    try:
        conds = dict(w.split("=", 1) for w in (where or []))
    except ValueError:
        typer.secho("--where takes attr=value, e.g. --where ink=red", fg="red", err=True)
        raise typer.Exit(2)
    request = ForgetRequest(dataset=dataset or f.dataset, classes=cls or f.classes,
                            where=conds if where else f.where)
    name = method or f.method
    try:
        bundle = load_model(model or p.model.dir, device=p.bootstrap.device)
        others = [d for d in p.data.datasets if d != request.dataset]
        result = run_method(bundle, request, name, p.methods.get(name), p.data.root, others, seed=p.benchmark.seed)
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)
    checks = check_targets(result["before"], result["after"], p.targets, request.is_subgroup)
    save_model(bundle, out, meta={"unlearning": {k: result[k] for k in ("method", "request", "config")}})
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(result | {"targets": checks}, indent=1) + "\n")
    typer.echo(format_rows([row(result, checks)]))
    typer.echo(f"model: {out}\nreport: {report}")
    if not all(checks.values()):
        raise typer.Exit(1)


@app.command()
def synthesize(params: str = PARAMS,
               dataset: Optional[str] = typer.Option(None, help="dataset (default: forget.dataset)"),
               cls: Optional[list[str]] = typer.Option(None, "--class", help="class (repeatable)"),
               model: Optional[str] = typer.Option(None, help="model (default: model.dir)"),
               out: str = typer.Option("runs/synthetic", help="output folder")):
    """Synthetic forget images by model inversion (class names only): tensors, grid.png, summary.json."""
    from clip_unlearn.models import load_model
    from clip_unlearn.unlearning import ForgetRequest
    from clip_unlearn.unlearning.context import UnlearnContext
    from clip_unlearn.unlearning.synthesize import save_synthetic
    from clip_unlearn.unlearning.synthesize import synthesize as make

    p = _params(params)
    request = ForgetRequest(dataset=dataset or p.forget.dataset, classes=cls or p.forget.classes)
    ctx = UnlearnContext(request, p.data.root, data_free=True)
    try:
        request.check(ctx.classes, {})
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)
    bundle = load_model(model or p.model.dir, device=p.bootstrap.device)
    syn = make(bundle, ctx.classes, ctx.forget_labels, request.dataset, p.methods["lipschitz"].synthesis,
               seed=p.benchmark.seed)
    folder = save_synthetic(syn, out, bundle.mean, bundle.std)
    typer.echo(f"wrote {folder} ({len(syn.labels)} images; grid: {folder / 'grid.png'})")


@app.command()
def benchmark(params: str = PARAMS):
    """Run every method (and the oracle) on the benchmark requests; write metrics/benchmark.json."""
    from clip_unlearn.unlearning.benchmark import format_rows, run_benchmark

    p = _params(params)
    rows = run_benchmark(p)
    typer.echo("\n" + format_rows(rows))
    typer.echo(f"\nwrote {p.benchmark.out}")


@app.command()
def methods():
    """List the registered unlearning methods."""
    from clip_unlearn.unlearning import METHODS

    for name, m in sorted(METHODS.items()):
        typer.echo(f"{name:<16} {'data-free' if m.data_free else 'uses data':<10} {m.summary}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":
    main()
