"""Typed, validated configuration: every setting lives in params.yaml.

    from clip_unlearn.config import load_params
    params = load_params("params.yaml")            # raises ConfigError naming the bad key
    params.bootstrap.steps

Unknown keys and bad values stop with a message that names the key path and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A params file or request that does not validate; the message names each bad field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BUILTIN = ("digits", "shapes")


class DataConfig(Section):
    root: str = "data"
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    scale: float = Field(1.0, gt=0, le=10, description="multiplies every built-in dataset's size")
    datasets: list[str] = Field(default_factory=lambda: list(BUILTIN), min_length=1)

    @field_validator("datasets")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in BUILTIN]
        if bad:
            raise ValueError(f"unknown built-in dataset(s) {bad}; allowed: {list(BUILTIN)}")
        return v


class ModelConfig(Section):
    arch: str = "clip-ref-tiny"
    pretrained: str | None = None
    dir: str = "models/reference"


class BootstrapConfig(Section):
    steps: int = Field(1700, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    init_temperature: float = Field(0.07, gt=0, le=1)
    max_logit_scale: float = Field(100.0, gt=1)
    class_only_frac: float = Field(0.25, ge=0, le=1)
    max_shift: int = Field(2, ge=0, le=8)
    amp: bool = True
    seed: int = 0
    threads: int = Field(0, ge=0, description="0 = all cores")
    device: str = "auto"
    log_every: int = Field(100, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("allowed: 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v


class EvaluationConfig(Section):
    batch_size: int = Field(512, ge=1)
    split: Literal["val", "test"] = "test"
    out: str = "metrics/reference.json"
    details: str = "reports/reference_eval.json"


class Params(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    evaluation: EvaluationConfig = EvaluationConfig()


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = _model_at(Params, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see params.yaml"
            lines.append(f"{source}: {path}: unknown key; allowed here: {allowed}")
        else:
            lines.append(f"{source}: {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc) -> type[BaseModel] | None:
    for key in loc:
        field = model.model_fields.get(str(key))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def validate(model: type[BaseModel], data: Any, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; copy params.yaml from the repository root.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections ({', '.join(Params.model_fields)})")
    return validate(Params, data, str(path))
