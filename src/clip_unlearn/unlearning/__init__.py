"""Unlearning methods behind one interface, and a registry by name.

    from clip_unlearn.unlearning import ForgetRequest, run_method, METHODS
    run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "projection")

Importing the package registers every method module.
"""

from clip_unlearn.unlearning import (  # noqa: F401  (register every method)
    attribute_edit, auto, baselines, lipschitz, oracle, projection, standin_subgroup, subgroup, text_edit)
from clip_unlearn.unlearning.registry import METHODS, get_method, register
from clip_unlearn.unlearning.request import ForgetRequest
from clip_unlearn.unlearning.runner import run_method

__all__ = ["METHODS", "ForgetRequest", "get_method", "register", "run_method"]
