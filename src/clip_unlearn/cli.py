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


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":
    main()
