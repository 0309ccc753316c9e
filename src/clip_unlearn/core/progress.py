"""Progress bars on long steps (training, unlearning, relearning), for a person at a terminal.

    for step in track(range(cfg.steps), "training"):
        ...

A rich bar on stderr when stderr is a terminal; otherwise (logs, CI, Prefect workers) the
iterable passes through untouched. CLIP_UNLEARN_PROGRESS=0 switches bars off.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("CLIP_UNLEARN_PROGRESS", "1") != "0"


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from items
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
