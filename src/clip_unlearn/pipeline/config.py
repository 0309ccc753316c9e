"""Typed, validated configuration: every setting lives in params.yaml.

    from clip_unlearn.pipeline.config import load_params
    params = load_params("params.yaml")            # raises ConfigError naming the bad key
    params.bootstrap.steps, params.gate.forget_max, params.methods["projection"].alpha

Unknown keys and bad values stop with a message that names the key path and what is allowed.
Each section's type lives beside the code it configures (core.train.BootstrapConfig,
core.gate.Thresholds, one config per method, ...); this module puts them together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from clip_unlearn.core.assurance import AssuranceConfig
from clip_unlearn.core.data import BUILTIN_DATASETS
from clip_unlearn.core.gate import Thresholds
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError, Section, validate
from clip_unlearn.core.train import BootstrapConfig
from clip_unlearn.methods import METHODS
from clip_unlearn.pipeline.benchmark import BenchmarkConfig
from clip_unlearn.pipeline.model_registry import RegistryConfig
from clip_unlearn.pipeline.request_store import ErasureRequest
from clip_unlearn.pipeline.storage import StorageConfig


class DataConfig(Section):
    root: str = "data"
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    scale: float = Field(1.0, gt=0, le=10, description="multiplies every built-in dataset's size")
    datasets: list[str] = Field(default_factory=lambda: list(BUILTIN_DATASETS), min_length=1)

    @field_validator("datasets")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in BUILTIN_DATASETS]
        if bad:
            raise ValueError(f"unknown built-in dataset(s) {bad}; allowed: {list(BUILTIN_DATASETS)}")
        return v


class ModelConfig(Section):
    arch: str = "clip-ref-tiny"
    pretrained: str | None = None
    dir: str = "models/reference"


class EvaluationConfig(Section):
    batch_size: int = Field(512, ge=1)
    split: Literal["val", "test"] = "test"
    out: str = "metrics/reference.json"
    details: str = "reports/reference_eval.json"


class ForgetDefault(ForgetRequest):
    """The default request (what `unlearn forget`, `unlearn erase` and `dvc repro` erase): what to
    forget, and the method."""
    dataset: str = "digits"
    classes: list[str] = Field(default_factory=lambda: ["seven"], min_length=1)
    method: str = "auto"

    @property
    def request(self) -> ForgetRequest:
        return ForgetRequest(dataset=self.dataset, classes=self.classes, where=self.where)


class ScheduleConfig(Section):
    """Where erasures run on Prefect: the base deployment of the erase-request flow (one copy per
    model is made from it, `<erase_deployment>-<model>`, one run at a time) and the cron sweeper."""
    cron: str = Field("*/10 * * * *", description="when the sweeper (process-requests) starts what is pending")
    timezone: str = "UTC"
    work_pool: str = Field("local-process", pattern=r"^[A-Za-z0-9._-]+$")
    deployment: str = Field("process-requests", pattern=r"^[A-Za-z0-9._-]+$")
    erase_deployment: str = Field("erase-cpu", pattern=r"^[A-Za-z0-9._-]+$",
                                  description="deployment of flow erase-request that submit and the sweeper start")


class EraseConfig(Section):
    """The erasure job: where it works, how long a worker's lease lasts, the default request."""
    workdir: str = "runs/erase"
    lease_seconds: float = Field(300, gt=0, description="claim and model-lease TTL: renewed every third of it while a "
                                 "job runs; a worker that stops renewing loses them after this")
    max_attempts: int = Field(3, ge=1, le=20, description="tries per request before it is marked failed")
    request_id: str = Field("quickstart-digits-seven", description="id of the default request (forget:)")
    requester: str = "quickstart"
    reason: str = "Quickstart: erase the default class and prove it"
    schedule: ScheduleConfig = ScheduleConfig()


def _validate_methods(value: Any) -> dict[str, Section]:
    """Every registered method gets its typed config; params.yaml overrides any field."""
    value = value or {}
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of method name -> hyperparameters")
    unknown = sorted(set(value) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; allowed: {sorted(METHODS)}")
    out = {}
    for name, method in sorted(METHODS.items()):
        given = value.get(name) or {}
        out[name] = given if isinstance(given, method.config_cls) else \
            validate(method.config_cls, given, f"methods.{name}")
    return out


# Sections and keys of earlier params files, and where their settings live now.
MOVED_GATE = ("`targets:` and `verify:` were merged into one section, `gate:`, with the keys of `verify:` (the same "
              "keys a request's thresholds use): rename `verify:` to `gate:` and delete `targets:`")
MOVED_WAIT = ("`erase.model_wait_seconds` is gone: no worker waits for another worker's model any more (a busy "
              "model is skipped and its requests run later, or on Prefect one run per model at a time); delete it")
MOVED_RELEARN = ("the relearning limit is a gate limit now: move `assurance.relearn_forget_max` to "
                 "`gate.relearn_forget_max`")


class Params(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    forget: ForgetDefault = ForgetDefault()
    methods: dict[str, Section] = Field(default_factory=dict, validate_default=True)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    storage: StorageConfig = StorageConfig()
    registry: RegistryConfig = RegistryConfig()
    gate: Thresholds = Thresholds()
    assurance: AssuranceConfig = AssuranceConfig()
    erase: EraseConfig = EraseConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [MOVED_GATE] if "targets" in data or "verify" in data else []
            if isinstance(data.get("assurance"), dict) and "relearn_forget_max" in data["assurance"]:
                moved.append(MOVED_RELEARN)
            if isinstance(data.get("erase"), dict) and "model_wait_seconds" in data["erase"]:
                moved.append(MOVED_WAIT)
            if moved:
                raise ValueError("; ".join(moved))
        return data

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> dict[str, Section]:
        return _validate_methods(v)

    def default_request(self) -> ErasureRequest:
        """The erasure request the Quickstart and `dvc repro` run: forget: plus erase: ids."""
        e, f = self.erase, self.forget
        return ErasureRequest(id=e.request_id, requester=e.requester, reason=e.reason, model=self.registry.model_name,
                              dataset=f.dataset, classes=f.classes, where=f.where, method=f.method)


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
