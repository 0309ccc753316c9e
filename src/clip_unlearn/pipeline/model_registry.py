"""The model registry in MLflow: one registered model per deployed CLIP, one version per erasure.

    c = client(cfg)                                   # RegistryError if no tracking server is set
    mv = resolve(c, "clip-ref", "champion")          # alias or version number
    check_base(cfg, "clip-ref", "3")                  # the same, after a quick reachability check
    path = fetch(mv, storage_cfg, "runs/base")        # weights checked against the version's sha256
    mv = register(c, "clip-ref", logged_model, tags)  # a new version of an MLflow model
    move_alias(c, storage_cfg, "clip-ref", "champion", "3", why="request gdpr-42 passed", expect="2")

Every version is an MLflow model (pipeline/mlflow_model.py) in MLflow's artifact store, source
`models:/m-<id>`; its tag `weights_sha256` is checked on every fetch. Versions registered before
that (source: a bare `s3://<bucket>/models/<name>/<sha256>/` folder) keep loading from S3. Every alias move is
appended to `registry-audit/<name>/` in S3 (who, when, from, to, why) and tagged on the version.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from pydantic import Field

from clip_unlearn.core.models import CONFIG_FILE, WEIGHTS_FILE, file_sha256, mlflow_model_dir
from clip_unlearn.core.schema import Section
from clip_unlearn.pipeline import storage
from clip_unlearn.pipeline.errors import IntegrityError, RegistryError
from clip_unlearn.pipeline.eventlog import utcnow
from clip_unlearn.pipeline.storage import StorageConfig


class RegistryConfig(Section):
    tracking_uri: str | None = Field(None, description="None: MLFLOW_TRACKING_URI from the environment")
    model_name: str = Field("clip-ref", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    experiment: str = "clip-unlearn-erasure"


def tracking_uri(cfg: RegistryConfig) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RegistryError("no MLflow tracking server configured: start the local stack and load its "
                            "environment (bash infra/stack.sh start; eval \"$(bash infra/stack.sh env)\"), or set "
                            "MLFLOW_TRACKING_URI / registry.tracking_uri in params.yaml.")
    return uri


def client(cfg: RegistryConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg), registry_uri=tracking_uri(cfg))


def ping(cfg: RegistryConfig, timeout: float = 10.0) -> None:
    """Fail fast (ConnectionError) if an http(s) tracking server does not answer: MLflow's own
    client retries a refused connection for about 4 minutes before it gives up."""
    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass   # it answered
    except (OSError, ValueError) as e:
        where = storage.scrub(storage.redact_url(uri))
        raise ConnectionError(f"MLflow tracking server {where} is unreachable ({getattr(e, 'reason', e)}); "
                              "nothing was changed. Start it (bash infra/stack.sh start) or retry later.") from None


def artifact_url(cfg: RegistryConfig, run_id: str, path: str) -> str:
    """The URL of a run's artifact file on the tracking server. MLflow 3.17 sends every artifact as an
    attachment (Content-Disposition, against XSS), so a browser saves the file rather than shows it."""
    return f"{tracking_uri(cfg).rstrip('/')}/get-artifact?{urllib.parse.urlencode({'path': path, 'run_uuid': run_id})}"


def artifact_page_url(cfg: RegistryConfig, experiment_id: str, run_id: str, path: str) -> str:
    """The MLflow UI's page of a run's artifact, which shows an HTML artifact as a page in the browser
    (the UI's route /experiments/:experimentId/runs/:runUuid/artifacts/<path>, MLflow 3.17)."""
    return f"{tracking_uri(cfg).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"


def check_base(cfg: RegistryConfig, name: str, ref: str):
    """The version a request would erase from, checked before anything is queued or started:
    RegistryError lists what exists; ConnectionError if the registry is unreachable."""
    ping(cfg)
    return resolve(client(cfg), name, ref)


def actor() -> str:
    return os.environ.get("CLIP_UNLEARN_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def _not_found(e: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower()


def versions(c, name: str) -> list:
    return sorted(c.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def aliases(c, name: str) -> dict[str, str]:
    try:
        return dict(c.get_registered_model(name).aliases)
    except Exception as e:
        if _not_found(e):
            return {}
        raise


def resolve(c, name: str, ref: str):
    """A ModelVersion by alias ('champion') or number ('3'); RegistryError says what exists."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if not _not_found(e):
            raise
        known = [m.name for m in c.search_registered_models()]
        raise RegistryError(f"no registered model {name!r} (registered: {', '.join(known) or 'none'}); "
                            "register one with `unlearn bootstrap` or `unlearn models register`") from None
    try:
        return c.get_model_version(name, ref) if ref.isdigit() else c.get_model_version_by_alias(name, ref)
    except MlflowException as e:
        if not _not_found(e):
            raise
        have = ", ".join(f"{a}->v{v}" for a, v in aliases(c, name).items()) or "none"
        nums = ", ".join(v.version for v in versions(c, name)) or "none"
        what = "version" if ref.isdigit() else "alias"
        raise RegistryError(f"{name}: no {what} {ref!r} (aliases: {have}; versions: {nums})") from None


def find(c, name: str, **tags: str):
    """The versions of `name` carrying all of these tags (e.g. request_id=...)."""
    conds = " and ".join([f"name = '{name}'"] + [f"tags.{k} = '{v}'" for k, v in tags.items()])
    return sorted(c.search_model_versions(conds), key=lambda v: int(v.version))


def is_mlflow_model(mv) -> bool:
    """A version logged as an MLflow model (source models:/m-<id>); older versions point at a bare
    s3://<bucket>/models/<name>/<sha256> folder (no MLmodel) and keep loading from there."""
    return str(mv.source).startswith("models:/")


def model_id(mv) -> str | None:
    """The LoggedModel id of a version (ModelVersion.model_id comes back empty through the REST server)."""
    return getattr(mv, "model_id", None) or (str(mv.source)[len("models:/"):] if is_mlflow_model(mv) else None)


def fetch(mv, cfg: StorageConfig, dest: str | Path, tracking_uri: str | None = None) -> Path:
    """Download a version's open_clip folder into `dest` and check its weights against the version's
    sha256 (through MLflow's artifact store; older versions straight from the configured bucket)."""
    dest, want = Path(dest), (mv.tags or {}).get("weights_sha256")
    if is_mlflow_model(mv):
        mlflow_model_dir(mv.name, mv.version, dest, tracking_uri)
    else:
        source, root = mv.source, storage.uri(cfg)
        if not source.startswith(root + "/"):
            raise RegistryError(f"{mv.name} v{mv.version}: source {source} is outside {root}; "
                                "only versions whose weights live in the configured bucket can be fetched")
        key = source[len(root) + 1:]
        storage.get_file(cfg, f"{key}/{CONFIG_FILE}", dest / CONFIG_FILE)
        storage.get_file(cfg, f"{key}/{WEIGHTS_FILE}", dest / WEIGHTS_FILE)
    got = file_sha256(dest / WEIGHTS_FILE)
    if not want or got != want:
        (dest / WEIGHTS_FILE).unlink()
        raise IntegrityError(f"{mv.name} v{mv.version}: weights at {mv.source} have sha256 {got[:16]}..., the "
                             f"registry recorded {str(want)[:16]}...; the object was changed or corrupted. "
                             "Nothing was loaded; restore the object or roll back to another version.")
    return dest


def register(c, name: str, logged_model, tags: dict, description: str = ""):
    """A new version of `name` from a LoggedModel (mlflow_model.log_clip_model): source models:/<id>."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, description="CLIP model managed by clip-unlearn")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    return c.create_model_version(name, f"models:/{logged_model.model_id}", run_id=logged_model.source_run_id,
                                  description=description, tags={k: str(v) for k, v in tags.items()},
                                  model_id=logged_model.model_id)


def move_alias(c, cfg: StorageConfig, name: str, alias: str, version: str, why: str,
               expect: str | None | bool = False) -> dict:
    """Point `alias` at `version`, recording the move. `expect`: the version the alias must point at
    now (None: must be unset); the move is refused if it moved meanwhile. False: no check."""
    current = aliases(c, name).get(alias)
    if expect is not False and current != expect:
        raise RegistryError(f"{name}@{alias} is v{current}, expected v{expect}: it moved while this job ran; "
                            "not moving it (rerun to erase from the new version)")
    record = {"model": name, "alias": alias, "from": current, "to": str(version), "why": why,
              "who": actor(), "when": utcnow()}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    key = storage.safe_key("registry-audit", name, f"{stamp}-{time.time_ns() % 10**9:09d}-{uuid.uuid4().hex[:6]}.json")
    storage.put_json(cfg, key, record)   # evidence first: a move is never unrecorded
    c.set_registered_model_alias(name, alias, str(version))
    c.set_model_version_tag(name, str(version), f"alias.{alias}.set", f"{record['when']} by {record['who']}: {why}")
    return record


def audit_log(cfg: StorageConfig, name: str) -> list[dict]:
    keys = storage.list_keys(cfg, storage.safe_key("registry-audit", name) + "/")
    return [storage.get_json(cfg, k) for k in sorted(keys)]


def describe(mv) -> dict:
    t = mv.tags or {}
    return {"version": mv.version, "verdict": t.get("verdict", ""), "request_id": t.get("request_id", ""),
            "method": t.get("method", ""), "forgotten": t.get("forgotten", ""), "base": t.get("base_version", ""),
            "aliases": ",".join(mv.aliases or []), "sha256": t.get("weights_sha256", "")[:12]}

