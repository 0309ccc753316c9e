"""Base of every typed config section, and the validation that turns pydantic's errors into
messages naming the field path and what is allowed.

    validate(ProjectionConfig, {"alpha": 2}, "params.yaml: methods.projection")
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A params file or request that does not validate; the message names each bad field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _model_at(model: type[BaseModel], loc) -> type[BaseModel] | None:
    for key in loc:
        field = model.model_fields.get(str(key))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        where = f"{source}: {path}" if path else source
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see params.yaml"
            lines.append(f"{where}: unknown key; allowed here: {allowed}")
        elif e["type"] == "value_error":  # our own validators already say what was wrong
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            got = repr(e.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."   # a 1 MB field must not fill the screen
            lines.append(f"{where}: {e['msg']} (got {got})")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: Any, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, model, source)) from None
