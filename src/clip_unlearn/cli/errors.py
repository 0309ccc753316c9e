"""What a failure looks like on the command line, in one place: one red line on stderr (credentials
scrubbed) and one exit code, whichever command failed.

    0  ok
    1  the command ran and the answer is no: verification failed, a request failed, a promotion refused
    2  bad input: a params file, request, name, version or path that is wrong (the message says what to do)
    3  a server is unreachable: retry later, nothing was lost

`unlearn --debug ...` also prints the traceback.
"""

from __future__ import annotations

import traceback

import click
import typer
from typer.core import TyperGroup

from clip_unlearn.core.schema import ConfigError
from clip_unlearn.pipeline.errors import RegistryError, is_transient
from clip_unlearn.pipeline.storage import scrub

DEBUG = {"traceback": False}   # set by `unlearn --debug`


class Refused(Exception):
    """The command ran and says no (exit 1), e.g. promoting a version without evidence."""


def exit_code(e: BaseException) -> int:
    if isinstance(e, Refused):
        return 1
    if isinstance(e, (ValueError, RegistryError)):   # ConfigError, an unknown model or version, bad text
        return 2
    if is_transient(e):
        return 3
    return 2 if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) else 1


def one_line(msg: str, cap: int = 2000) -> str:
    """Credentials scrubbed, lines joined, capped, any character printable."""
    line = "; ".join(part.strip() for part in scrub(msg).splitlines() if part.strip())
    line = line if len(line) <= cap else line[:cap] + "..."
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def say(msg: str) -> None:
    """One red line on stderr."""
    typer.secho(one_line(msg), fg="red", err=True)


class Group(TyperGroup):
    """Turns any exception a command lets through into one line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001
            if DEBUG["traceback"]:
                traceback.print_exception(e)
            say(f"error: {e}")
            raise typer.Exit(exit_code(e)) from None


def params(path: str):
    """params.yaml, validated (pipeline.config.Params)."""
    from clip_unlearn.pipeline.config import load_params  # heavy: every method module, torch, open_clip

    try:
        return load_params(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the params file ({e.strerror or e})") from None


def where_option(where: list[str] | None) -> dict[str, str]:
    """--where attr=value (repeatable) -> {attr: value}."""
    try:
        return dict(w.split("=", 1) for w in (where or []))
    except ValueError:
        raise ConfigError("--where takes attr=value, e.g. --where ink=red") from None
