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
from pydantic import Field, field_validator

from clip_unlearn.erasure.registry import RegistryConfig
from clip_unlearn.erasure.verify import Thresholds
from clip_unlearn.schema import ConfigError, Section, validate
from clip_unlearn.storage import StorageConfig


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
    lr: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    init_temperature: float = Field(0.07, gt=0, le=1)
    max_logit_scale: float = Field(100.0, gt=1)
    class_only_frac: float = Field(0.4, ge=0, le=1)
    max_shift: int = Field(1, ge=0, le=8)
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


class ForgetConfig(Section):
    """The default forget request (what `unlearn forget` and the pipeline erase)."""
    dataset: str = "digits"
    classes: list[str] = Field(default_factory=lambda: ["seven"], min_length=1)
    where: dict[str, str] = Field(default_factory=dict)
    method: str = "auto"

    def request(self):
        from clip_unlearn.unlearning.request import ForgetRequest

        return ForgetRequest(dataset=self.dataset, classes=self.classes, where=self.where)


class BenchmarkRequest(Section):
    dataset: str
    classes: list[str] = Field(min_length=1)
    where: dict[str, str] = Field(default_factory=dict)


class HoldoutConfig(Section):
    """Requests drawn by `seed` from the classes the benchmark above does not name: no default was
    tuned on them (hyperparameters are chosen on the named requests, val split)."""
    seed: int = 2026
    n_classes: int = Field(8, ge=0, description="single-class requests")
    n_pairs: int = Field(4, ge=0, description="two-class requests (same dataset)")
    n_subgroups: int = Field(5, ge=0, description="one class restricted by one attribute value")
    n_lineage: int = Field(3, ge=0, description="erase A, then B from that version; A re-measured")
    class_methods: list[str] = Field(default_factory=lambda: ["auto", "text_edit", "projection", "lipschitz"])
    subgroup_methods: list[str] = Field(default_factory=lambda: ["auto", "attribute_edit", "standin_subgroup", "subgroup"])
    lineage_method: str = "auto"
    oracle: bool = Field(False, description="also retrain the oracle on the first hold-out class request (~9 min)")


class BenchmarkConfig(Section):
    classes: dict[str, list[str]] = Field(default_factory=lambda: {
        "digits": ["three", "seven", "nine"], "shapes": ["star", "heart", "arrow"]})
    multi_class: list[BenchmarkRequest] = Field(default_factory=lambda: [
        BenchmarkRequest(dataset="digits", classes=["one", "four", "eight"])])
    subgroups: list[BenchmarkRequest] = Field(default_factory=lambda: [
        BenchmarkRequest(dataset="digits", classes=["seven"], where={"ink": "red"}),
        BenchmarkRequest(dataset="digits", classes=["three"], where={"background": "white"}),
        BenchmarkRequest(dataset="shapes", classes=["star"], where={"colour": "blue"})])
    class_methods: list[str] = Field(default_factory=lambda: ["auto", "text_edit", "projection", "lipschitz",
                                                              "gradient_ascent", "random_labels"])
    subgroup_methods: list[str] = Field(default_factory=lambda: ["auto", "attribute_edit", "standin_subgroup", "subgroup",
                                                                 "gradient_ascent"])
    oracle: Literal["none", "first", "all"] = Field(
        "first", description="retrain-from-scratch oracle on the first class request, on all, or on none")
    holdout: HoldoutConfig = HoldoutConfig()
    seed: int = 0
    out: str = "metrics/benchmark.json"
    plots_dir: str = "reports/plots"


def _validate_methods(value: Any) -> dict[str, Section]:
    """Every registered method gets its typed config; params.yaml overrides any field."""
    from clip_unlearn.unlearning.registry import METHODS, get_method

    get_method("projection")  # imports and registers every method module
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


class ScheduleConfig(Section):
    cron: str = Field("*/10 * * * *", description="when the deployment processes pending requests")
    timezone: str = "UTC"
    work_pool: str = Field("local-process", pattern=r"^[A-Za-z0-9._-]+$")
    deployment: str = Field("process-requests", pattern=r"^[A-Za-z0-9._-]+$")


class EraseConfig(Section):
    """The erasure job: where it works, how long a worker's lease lasts, the default request."""
    workdir: str = "runs/erase"
    lease_seconds: float = Field(900, gt=0, description="a worker that stops renewing loses its claim after this")
    model_wait_seconds: float = Field(1800, ge=0, description="wait this long for another worker on the same model")
    max_attempts: int = Field(3, ge=1, le=20, description="tries per request before it is marked failed")
    request_id: str = Field("quickstart-digits-seven", description="id of the default request (forget:)")
    requester: str = "quickstart"
    reason: str = "Quickstart: erase the default class and prove it"
    schedule: ScheduleConfig = ScheduleConfig()


class Params(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    forget: ForgetConfig = ForgetConfig()
    methods: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    targets: Any = Field(None, validate_default=True)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    storage: StorageConfig = StorageConfig()
    registry: RegistryConfig = RegistryConfig()
    verify: Thresholds = Thresholds()
    assurance: Any = Field(None, validate_default=True)
    erase: EraseConfig = EraseConfig()

    def default_request(self):
        """The erasure request the Quickstart and `dvc repro` run: forget: plus erase: ids."""
        from clip_unlearn.erasure.requests import ErasureRequest

        e, f = self.erase, self.forget
        return ErasureRequest(id=e.request_id, requester=e.requester, reason=e.reason, model=self.registry.model_name,
                              dataset=f.dataset, classes=f.classes, where=f.where, method=f.method)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> dict[str, Section]:
        return _validate_methods(v)

    @field_validator("assurance", mode="before")
    @classmethod
    def _assurance(cls, v: Any):
        from clip_unlearn.unlearning.assurance import AssuranceConfig

        return v if isinstance(v, AssuranceConfig) else validate(AssuranceConfig, v or {}, "assurance")

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, v: Any):
        from clip_unlearn.unlearning.targets import TargetsConfig

        return v if isinstance(v, TargetsConfig) else validate(TargetsConfig, v or {}, "targets")


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
