"""One registry of unlearning methods by name.

    @register("projection", ProjectionConfig, data_free=True)
    def projection(bundle, ctx, cfg) -> dict: ...     # changes bundle.model in place

    method = get_method("projection"); info = method.fn(bundle, ctx, method.config_cls())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from clip_unlearn.core.schema import ConfigError, Section


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    config_cls: type[Section]
    data_free: bool  # never reads real images of what it forgets
    summary: str


METHODS: dict[str, Method] = {}


def register(name: str, config_cls: type[Section], data_free: bool):
    def wrap(fn: Callable) -> Callable:
        METHODS[name] = Method(name, fn, config_cls, data_free, (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return wrap


def get_method(name: str) -> Method:
    """A registered method (every method module registers itself when clip_unlearn.methods is imported)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name]
