"""Shared fixtures. Configs are shrunk for speed: tiny datasets, a few training steps.

Markers: `slow` (minutes; CI runs them with `-m slow`), `gpu` (needs CUDA), `reference` (set here on
every test that takes `reference_params`: CI runs those beside the others, see .ci/run).
Every process a test starts is stopped when the run ends, however it ends (tests/servers.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import clip_unlearn  # noqa: F401  (telemetry off, torchvision patched)
from clip_unlearn.core.assurance import AssuranceConfig
from clip_unlearn.core.data import image_dataset
from clip_unlearn.core.depth import DepthConfig
from clip_unlearn.core.splits import cached_split, retained_split
from clip_unlearn.methods import UnlearnContext, run_method
from clip_unlearn.pipeline.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


# Mechanics tests on a random tiny model: no accuracy or depth limit, the relearning check at 1.0.
DEPTH_OFF = {f"{g}depth_{m}_max": None for g in ("", "subgroup_") for m in ("prototypes", "probe", "relearn", "paraphrase")}
LENIENT = {k: None for k in ("forget_max", "retain_drop_max", "other_drop_max", "subgroup_rest_drop_max",
                             "other_classes_drop_max")} | {"relearn_forget_max": 1.0} | DEPTH_OFF


# The depth attacks' picks for 5% data (a class has ~30 train images; the default probe alone holds 100
# a class, leaving a method that reads forgotten images none): measured by nothing (enabled False, as
# when a context has no assurance), held out of ctx.forget_set all the same.
TINY_ATTACKS = AssuranceConfig(enabled=False, depth=DepthConfig(shots=3, probe_per_class=8))


def run(bundle, request, method: str, cfg=None, data_root: str = "data", others=(), before=None, **ctx):
    """run_method with a context built from keyword arguments (UnlearnContext's fields)."""
    ctx.setdefault("log", lambda _: None)
    ctx.setdefault("assurance", TINY_ATTACKS)
    return run_method(bundle, method, UnlearnContext(request=request, data_root=str(data_root), others=list(others),
                                                     **ctx), cfg, before)


def shrink(params: Params, root: Path, **bootstrap) -> Params:
    """A copy of params that runs in seconds: 5% of the data, a few small training steps."""
    return params.model_copy(update={
        "data": params.data.model_copy(update={"root": str(root / "data"), "scale": 0.05}),
        "model": params.model.model_copy(update={"dir": str(root / "models" / "reference")}),
        "bootstrap": params.bootstrap.model_copy(update={"steps": 6, "batch_size": 32, "log_every": 2, **bootstrap}),
        "methods": {**params.methods, "partial_retrain": params.methods["partial_retrain"].model_copy(
            update={"steps": 3, "batch": 16})},
        "assurance": params.assurance.model_copy(update={"depth": params.assurance.depth.model_copy(
            update=TINY_ATTACKS.depth.model_dump(exclude_unset=True))}),
        "evaluation": params.evaluation.model_copy(update={
            "out": str(root / "metrics" / "reference.json"), "details": str(root / "reports" / "eval.json")}),
    })


@pytest.fixture(scope="session")
def repo_params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_params(repo_params, tiny_root) -> Params:
    """Shrunk params whose built-in datasets are generated once per session."""
    from clip_unlearn.pipeline.reference import make_data

    params = shrink(repo_params, tiny_root)
    make_data(params)
    return params


def trained_reference(root: Path) -> Params:
    """Params whose data, reference model and metrics live under root: the full default reference,
    trained unless root already holds it (slow: ~10 min on 2 cores). CI trains it first, alone:
    PYTHONPATH=tests python -c 'import sys, conftest; conftest.trained_reference(sys.argv[1])' DIR"""
    from clip_unlearn.pipeline.reference import make_data, model_is_current, train_and_save

    root, repo = Path(root), load_params(REPO / "params.yaml")
    params = repo.model_copy(update={
        "data": repo.data.model_copy(update={"root": str(root / "data")}),
        "model": repo.model.model_copy(update={"dir": str(root / "models" / "reference")}),
        "evaluation": repo.evaluation.model_copy(update={
            "out": str(root / "metrics" / "reference.json"), "details": str(root / "reports" / "eval.json")}),
    })
    make_data(params)
    if not model_is_current(params):
        train_and_save(params)
    return params


@pytest.fixture(scope="session")
def reference_params(tmp_path_factory) -> Params:
    """The full default reference model, trained once per session (trained_reference).
    Set CLIP_UNLEARN_TEST_REFERENCE=DIR to reuse a folder between runs."""
    return trained_reference(os.environ.get("CLIP_UNLEARN_TEST_REFERENCE") or tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised clip-ref-tiny saved as a model folder (seeded): a base to erase from."""
    from clip_unlearn.core.models import load_model, save_model

    torch.manual_seed(0)
    return str(save_model(load_model("clip-ref-tiny", device="cpu"), tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "reference_params" in item.fixturenames:
            item.add_marker(pytest.mark.reference)


def pytest_configure(config):
    from servers import install_signal_handlers

    install_signal_handlers()


@pytest.hookimpl(wrapper=True)   # after the fixtures' own finalizers, even if one of them raised
def pytest_sessionfinish(session, exitstatus):
    from servers import stop_all

    try:
        return (yield)
    finally:
        stop_all()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def weed_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the session: {"endpoint", "key", "secret", "startup_s"}."""
    from servers import start_weed

    with start_weed(tmp_path_factory.mktemp("weed")) as server:
        yield server


STACK_BUCKET = "clip-unlearn-test"


@pytest.fixture(scope="session")
def stack(weed_server, tmp_path_factory):
    """S3 + an MLflow tracking server (artifacts in that S3), with the environment a user gets
    from `eval "$(bash infra/stack.sh env)"` set for the session."""
    from servers import start_mlflow, stop

    aws = tmp_path_factory.mktemp("aws")   # empty config files: no user profile leaks in
    (aws / "config").write_text("")
    (aws / "credentials").write_text("")
    env = {"AWS_ACCESS_KEY_ID": weed_server["key"], "AWS_SECRET_ACCESS_KEY": weed_server["secret"],
           "AWS_ENDPOINT_URL": weed_server["endpoint"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    saved = {k: os.environ.get(k) for k in [*env, "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"]}
    os.environ.update(env)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        os.environ.pop(k, None)
    from clip_unlearn.pipeline import storage

    storage.ensure_bucket(storage.StorageConfig(bucket=STACK_BUCKET))
    root = tmp_path_factory.mktemp("mlflow")
    proc, url = start_mlflow(root, weed_server, STACK_BUCKET)
    os.environ["MLFLOW_TRACKING_URI"] = url
    facts = {**weed_server, "mlflow": url, "bucket": STACK_BUCKET, "mlflow_proc": proc, "mlflow_root": root}
    try:
        yield facts
    finally:
        stop(facts["mlflow_proc"])   # a test may have restarted it
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def image_paths(root: str, requests) -> set[str]:
    """Image paths of every split that the requests name."""
    out = set()
    for req in requests:
        for split in ("train", "val", "test"):
            ds = cached_split(req.dataset, split, root)
            out |= {ds._load.paths[j] for j in ds._indices[req.covers(ds)]}
    return out


@pytest.fixture
def reads(monkeypatch):
    """Every image path decoded while the fixture is active (caches cleared first)."""
    seen: list[str] = []
    cached_split.cache_clear()
    retained_split.cache_clear()
    original = image_dataset.FileLoader.__call__

    def record(self, j):
        seen.append(self.paths[j])
        return original(self, j)

    monkeypatch.setattr(image_dataset.FileLoader, "__call__", record)
    yield seen
    cached_split.cache_clear()
    retained_split.cache_clear()
