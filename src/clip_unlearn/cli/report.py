"""`unlearn report`: download a request's certificate, check its hash, and (--verify) its signature,
the registry and the weights in S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from clip_unlearn.cli import errors
from clip_unlearn.cli.errors import Refused
from clip_unlearn.cli.options import PARAMS
from clip_unlearn.core.schema import ConfigError


def report(request_id: str, params: str = PARAMS,
           out: str = typer.Option("runs/reports", help="where to download the certificate"),
           verify: bool = typer.Option(False, "--verify", help="also check the signature against the registry's "
                                       "public key and the weights in S3 against the registry and the certificate"),
           public_key: Optional[str] = typer.Option(None, help="with --verify: trust this PEM public key "
                                                    "instead of the one recorded in the registry")):
    """Download a request's certificate (JSON, HTML, PNG), check its hash, print its table.
    Exit 1 if any check fails (an unsigned certificate fails --verify)."""
    from clip_unlearn.pipeline import signing, storage
    from clip_unlearn.pipeline.audit import audit
    from clip_unlearn.pipeline.certificate import format_table, verify_certificate

    p = errors.params(params)
    trusted = None
    if public_key:
        try:
            trusted = Path(public_key).read_text()
            signing.load_public(trusted)
        except (OSError, UnicodeDecodeError, ConfigError) as e:
            raise ConfigError(f"--public-key {public_key}: {e}") from None
    folder = Path(out) / storage.safe_key(request_id)
    storage.download_dir(p.storage, storage.safe_key("certificates", request_id), folder)
    try:
        cert = json.loads((folder / "certificate.json").read_text())
        table = format_table(cert["before"], cert["after"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Refused(f"{folder / 'certificate.json'}: not a certificate ({type(e).__name__}: {e})") from None
    ok = verify_certificate(folder / "certificate.json")
    sig = cert.get("signature")
    signed = f"signed by key {sig.get('key_id')}" if isinstance(sig, dict) else "UNSIGNED"
    typer.echo(table)
    typer.echo(f"\nverdict: {cert.get('verdict')}   model: {cert['model']['name']} v{cert['model']['version']}   "
               f"integrity: {'ok' if ok else 'MISMATCH'}   {signed}\ncertificate: {folder / 'certificate.html'}")
    if verify:
        checks = audit(p, folder / "certificate.json", trusted)
        typer.echo("")
        for name, matched, detail in checks:
            typer.secho(f"{name:<12} {'ok' if matched else 'MISMATCH':<9} {detail}", fg=None if matched else "red")
        ok = ok and all(m for _, m, _ in checks)
        typer.secho(f"\nverify: {'every check matched' if ok else 'FAILED'}", fg="green" if ok else "red", bold=True)
    if not ok:
        raise typer.Exit(1)
