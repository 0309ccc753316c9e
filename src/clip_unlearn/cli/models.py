"""`unlearn models`: the registry's versions, promotion with evidence, rollback, the audit log."""

from __future__ import annotations

from typing import Optional

import typer

from clip_unlearn.cli import errors
from clip_unlearn.cli.errors import Refused
from clip_unlearn.cli.options import PARAMS

app = typer.Typer(no_args_is_help=True, help="The registry: list, promote, roll back, audit.")


def _registry(params: str):
    from clip_unlearn.pipeline import model_registry

    p = errors.params(params)
    return p, model_registry.client(p.registry)


@app.command("list")
def models_list(model: Optional[str] = typer.Argument(None), params: str = PARAMS):
    """Every version with its verdict, request, method, what it forgot, and aliases."""
    from clip_unlearn.pipeline import model_registry as registry

    p, c = _registry(params)
    name = model or p.registry.model_name
    rows = [registry.describe(v) for v in registry.versions(c, name)]
    for a, v in registry.aliases(c, name).items():
        for r in rows:
            if r["version"] == v:
                r["aliases"] = ",".join(sorted(set(filter(None, r["aliases"].split(",") + [a]))))
    typer.echo(f"{name}")
    typer.echo(f"{'ver':>4} {'aliases':<20} {'verdict':<8} {'base':>4} {'method':<12} {'request':<28} forgotten")
    for r in rows:
        typer.echo(f"{r['version']:>4} {r['aliases']:<20} {r['verdict']:<8} {r['base']:>4} {r['method']:<12} "
                   f"{r['request_id']:<28} {r['forgotten']}")


@app.command("promote")
def models_promote(version: str, reason: str = typer.Option(..., help="why (recorded in the audit log)"),
                   model: Optional[str] = typer.Option(None), params: str = PARAMS,
                   force: bool = typer.Option(False, help="promote a version whose verification did not pass")):
    """Point `champion` at VERSION (only a version that passed verification, unless --force)."""
    from clip_unlearn.pipeline import model_registry as registry

    p, c = _registry(params)
    name = model or p.registry.model_name
    mv = registry.resolve(c, name, version)
    verdict = (mv.tags or {}).get("verdict")
    if verdict not in ("passed", "base") and not force:
        raise Refused(f"{name} v{mv.version} has verdict {verdict!r}: not promoting without evidence "
                      "(--force records an override)")
    why = reason if verdict in ("passed", "base") else f"{reason} [forced: verdict {verdict}]"
    rec = registry.move_alias(c, p.storage, name, "champion", mv.version, why=why)
    typer.echo(f"{name}@champion: v{rec['from']} -> v{rec['to']} ({rec['who']}, {rec['when']})")


@app.command("rollback")
def models_rollback(reason: str = typer.Option(..., help="why (recorded in the audit log)"),
                    model: Optional[str] = typer.Option(None), params: str = PARAMS):
    """Move `champion` back to where it pointed before its last move."""
    from clip_unlearn.pipeline import model_registry as registry

    p, c = _registry(params)
    name = model or p.registry.model_name
    moves = [r for r in registry.audit_log(p.storage, name) if r["alias"] == "champion"]
    current = registry.aliases(c, name).get("champion")
    prev = next((r["from"] for r in reversed(moves) if r["to"] == current and r["from"]), None)
    if prev is None:
        raise Refused(f"{name}: champion v{current} has no earlier champion to roll back to")
    rec = registry.move_alias(c, p.storage, name, "champion", prev, why=f"rollback: {reason}", expect=current)
    typer.echo(f"{name}@champion: v{rec['from']} -> v{rec['to']} (rollback)")


@app.command("history")
def models_history(model: Optional[str] = typer.Argument(None), params: str = PARAMS):
    """Every alias move: when, who, alias, from, to, why."""
    from clip_unlearn.pipeline import model_registry as registry

    p = errors.params(params)
    name = model or p.registry.model_name
    for r in registry.audit_log(p.storage, name):
        typer.echo(f"{r['when']}  {r['who']:<24} {r['alias']:<10} v{r['from']} -> v{r['to']}  {r['why']}")


@app.command("register")
def models_register(model_dir: str, name: Optional[str] = typer.Option(None, help="registered model name"),
                    params: str = PARAMS):
    """Register a saved model folder (yours or the reference) as a base version."""
    from clip_unlearn.pipeline.registration import register_base

    info = register_base(errors.params(params), model_dir, name)
    typer.echo(f"{info['name']} v{info['version']} (weights {info['sha256'][:12]}); aliases {info['aliases']}")
