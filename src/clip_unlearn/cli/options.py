"""Options shared by several commands."""

from __future__ import annotations

import typer

PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file")

REQUEST = dict(
    request_file=typer.Option(None, "--request", "-r", help="request JSON file (docs/requests.md)"),
    rid=typer.Option(None, "--id", help="request id (default: erase.request_id, or derived from the content)"),
    dataset=typer.Option(None, help="dataset (default: forget.dataset)"),
    cls=typer.Option(None, "--class", help="class to forget (repeatable; default: forget.classes)"),
    where=typer.Option(None, help="subgroup filter attr=value (repeatable)"),
    method=typer.Option(None, help="method (default: forget.method)"),
    model=typer.Option(None, help="registered model (default: registry.model_name)"),
    requester=typer.Option(None, help="who asks"),
    reason=typer.Option(None, help="why (legal basis, ticket)"),
)
