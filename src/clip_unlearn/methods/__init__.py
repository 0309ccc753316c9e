"""Unlearning methods behind one interface, and a registry by name (one module per method).

    from clip_unlearn.methods import METHODS, UnlearnContext, run_method
    ctx = UnlearnContext(request=ForgetRequest(dataset="digits", classes=["seven"]), others=["shapes"])
    run_method(bundle, "projection", ctx)

Importing the package registers every method module. Methods import core only: never the pipeline
(requests, registry, certificates) or the drivers (Prefect, DVC, CLI).
"""

from clip_unlearn.methods import (  # noqa: F401  (register every method)
    attribute_edit,
    auto,
    baselines,
    lipschitz,
    oracle,
    partial_retrain,
    projection,
    standin_subgroup,
    subgroup,
    text_edit,
)
from clip_unlearn.methods.context import DataFreeViolation, UnlearnContext
from clip_unlearn.methods.registry import METHODS, get_method, register
from clip_unlearn.methods.runner import run_method

__all__ = ["METHODS", "DataFreeViolation", "UnlearnContext", "get_method", "register", "run_method"]
