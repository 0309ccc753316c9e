"""Commands for the data and the reference model: data, train-reference, evaluate, bootstrap."""

from __future__ import annotations

from typing import Optional

import typer

from clip_unlearn.cli import errors
from clip_unlearn.cli.options import PARAMS


def data(params: str = PARAMS):
    """Generate the built-in datasets (digits, shapes) under data.root."""
    from clip_unlearn.pipeline.reference import make_data

    for path in make_data(errors.params(params)):
        typer.echo(f"wrote {path}")


def train_reference(params: str = PARAMS):
    """Train the reference CLIP from scratch on the built-in training splits."""
    from clip_unlearn.pipeline.reference import train_and_save

    typer.echo(f"saved {train_and_save(errors.params(params))}")


def evaluate(params: str = PARAMS,
             model: Optional[str] = typer.Option(None, help="model dir, local-dir:, s3:// or open_clip name"),
             dataset: Optional[list[str]] = typer.Option(None, help="dataset spec (repeatable)"),
             out: Optional[str] = typer.Option(None, help="summary JSON path")):
    """Zero-shot evaluation (template ensemble, top-1, mean per-class recall, per class/subgroup)."""
    from clip_unlearn.pipeline.reference import evaluate_model, format_table

    results = evaluate_model(errors.params(params), model_dir=model, datasets=dataset, out=out)
    typer.echo(format_table(results))


def bootstrap(params: str = PARAMS, force_train: bool = typer.Option(False, help="retrain even if current"),
              register: bool = typer.Option(False, help="also register the model in MLflow as the base "
                                                        "(champion if there is none)")):
    """Run the bootstrap flow: data -> reference model (if needed) -> evaluation table."""
    from clip_unlearn.pipeline.reference import format_table
    from clip_unlearn.pipeline.registration import register_base
    from flows.bootstrap import bootstrap as bootstrap_flow

    p = errors.params(params)
    out = bootstrap_flow(params_path=params, force_train=force_train)
    typer.echo(f"\nreference model: {out['model_dir']}\n")
    typer.echo(format_table(out["results"]))
    if register:
        info = register_base(p, out["model_dir"], metrics=out["results"])
        typer.echo(f"\nbase model in the registry: {info['name']} v{info['version']}; aliases {info['aliases']}")
