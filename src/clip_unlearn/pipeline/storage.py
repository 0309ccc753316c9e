"""S3 access for artifacts: plain functions on a `StorageConfig`, boto3 underneath.

    from clip_unlearn.pipeline.storage import StorageConfig, put_json, get_json, safe_key
    cfg = StorageConfig(bucket="clip-unlearn", prefix="runs")
    put_json(cfg, safe_key(run_id, "metrics.json"), {"acc": 0.98})
    get_json(cfg, safe_key(run_id, "metrics.json"))

Every key is relative to `cfg.prefix`; a key that would leave it (`..`, a leading `/`, empty
segments) is refused, and so is an object key met by `download_dir` that would write outside
its destination folder.

The endpoint is `cfg.endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL from the
environment, else AWS itself. Credentials come only from boto3's chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, profiles, instance roles), never from the config, and never appear in
an error message: for the local stack, `eval "$(bash infra/stack.sh env)"` sets them.

Errors are `StorageError` (`ObjectNotFound` for a missing key, also a FileNotFoundError); each
names the endpoint, bucket and key and says what to do.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from clip_unlearn.pipeline.s3 import (  # noqa: F401  (storage.X is the API)
    S3_ERRORS,
    ObjectNotFound,
    StorageConfig,
    StorageError,
    check_id,
    client_or_new,
    fail,
    is_not_found,
    location,
    redact_url,
    s3_client,
    scrub,
)

# ---- keys ----------------------------------------------------------------------------------

def safe_key(*parts: str) -> str:
    """Join ids into a key, refusing anything but [A-Za-z0-9._-] and any '..'.
    safe_key("runs", run_id, "metrics.json") -> "runs/<run_id>/metrics.json"."""
    if not parts:
        raise ValueError("safe_key needs at least one part")
    return "/".join(check_id(p) for p in parts)


def _check_rel_key(key: str, what: str = "key") -> str:
    """A key relative to the prefix: '/'-separated, no empty, '.' or '..' segment, not absolute."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise ValueError(f"{what} {key!r} is absolute or has a backslash: keys are relative to the prefix")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError(f"{what} {key!r} contains control characters")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise ValueError(f"{what} {key!r} has an empty, '.' or '..' segment: it could escape the prefix")
    if len(key.encode()) > 900:
        raise ValueError(f"{what} is too long ({len(key.encode())} bytes; S3 allows 1024 with the prefix)")
    return key


def full_key(cfg: StorageConfig, key: str) -> str:
    """The object key in the bucket: prefix + '/' + key (key checked not to escape the prefix)."""
    key = _check_rel_key(key)
    return f"{cfg.prefix}/{key}" if cfg.prefix else key


def uri(cfg: StorageConfig, key: str = "") -> str:
    """s3://bucket/prefix/key (for MLflow, DVC, load_model)."""
    path = full_key(cfg, key) if key else cfg.prefix
    return f"s3://{cfg.bucket}/{path}" if path else f"s3://{cfg.bucket}"


# ---- operations ----------------------------------------------------------------------------

def ensure_bucket(cfg: StorageConfig, client=None) -> bool:
    """Create the bucket if it does not exist. True when it was created."""
    s3 = client_or_new(cfg, client)
    try:
        s3.head_bucket(Bucket=cfg.bucket)
        return False
    except ClientError as e:
        if str(e.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
            raise fail("head_bucket", e, s3, cfg) from None
    except BotoCoreError as e:
        raise fail("head_bucket", e, s3, cfg) from None
    kwargs: dict[str, Any] = {"Bucket": cfg.bucket}
    region = s3.meta.region_name
    if region and region not in ("us-east-1", "aws-global"):
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",):
            return False
        raise fail("create_bucket", e, s3, cfg) from None
    except BotoCoreError as e:
        raise fail("create_bucket", e, s3, cfg) from None
    return True


def put_bytes(cfg: StorageConfig, key: str, body: bytes, *, content_type: str = "application/octet-stream",
              client=None) -> str:
    """Write an object (overwrites). Returns its s3:// URI."""
    k = full_key(cfg, key)
    s3 = client_or_new(cfg, client)
    try:
        s3.put_object(Bucket=cfg.bucket, Key=k, Body=body, ContentType=content_type)
    except S3_ERRORS as e:
        raise fail("put_object", e, s3, cfg, k) from None
    return f"s3://{cfg.bucket}/{k}"


def get_bytes(cfg: StorageConfig, key: str, *, client=None) -> bytes:
    k = full_key(cfg, key)
    s3 = client_or_new(cfg, client)
    try:
        return s3.get_object(Bucket=cfg.bucket, Key=k)["Body"].read()
    except S3_ERRORS as e:
        raise fail("get_object", e, s3, cfg, k) from None


def put_json(cfg: StorageConfig, key: str, obj: Any, *, client=None) -> str:
    """Write `obj` as JSON (sorted keys, UTF-8). Returns its s3:// URI."""
    body = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode()
    return put_bytes(cfg, key, body, content_type="application/json", client=client)


def get_json(cfg: StorageConfig, key: str, *, client=None) -> Any:
    body = get_bytes(cfg, key, client=client)
    try:
        return json.loads(body)
    except ValueError as e:
        raise StorageError(f"s3://{cfg.bucket}/{full_key(cfg, key)} is not valid JSON: {e}") from None


def put_file(cfg: StorageConfig, key: str, path: str | Path, *, client=None) -> str:
    """Upload a local file (multipart when large). Returns its s3:// URI."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"put_file: {path} is not a file")
    k = full_key(cfg, key)
    s3 = client_or_new(cfg, client)
    try:
        s3.upload_file(str(path), cfg.bucket, k)
    except S3_ERRORS as e:
        raise fail("upload_file", _unwrap(e), s3, cfg, k) from None
    return f"s3://{cfg.bucket}/{k}"


def get_file(cfg: StorageConfig, key: str, path: str | Path, *, client=None) -> Path:
    """Download an object to `path` (parents created; written to a temporary name, then renamed)."""
    path = Path(path)
    k = full_key(cfg, key)
    s3 = client_or_new(cfg, client)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3.download_file(cfg.bucket, k, str(path))
    except S3_ERRORS as e:
        e = _unwrap(e)
        if is_not_found(e):
            _require_bucket(cfg, s3)   # a HEAD 404 does not say whether the bucket is missing
        raise fail("download_file", e, s3, cfg, k) from None
    return path


def _unwrap(exc: Exception) -> Exception:
    """s3transfer wraps some botocore errors; return the botocore one when there is one."""
    seen = exc
    while seen is not None and not isinstance(seen, ClientError | BotoCoreError):
        seen = seen.__cause__ or seen.__context__
    return seen or exc


def exists(cfg: StorageConfig, key: str, *, client=None) -> bool:
    k = full_key(cfg, key)
    s3 = client_or_new(cfg, client)
    try:
        s3.head_object(Bucket=cfg.bucket, Key=k)
        return True
    except S3_ERRORS as e:
        if is_not_found(e):
            # A HEAD 404 does not say whether the key or the bucket is missing: ask.
            _require_bucket(cfg, s3)
            return False
        raise fail("head_object", e, s3, cfg, k) from None


def _require_bucket(cfg: StorageConfig, s3) -> None:
    try:
        s3.head_bucket(Bucket=cfg.bucket)
    except S3_ERRORS as e:
        raise fail("head_bucket", e, s3, cfg) from None


def list_keys(cfg: StorageConfig, key_prefix: str = "", *, client=None) -> list[str]:
    """Keys under prefix/key_prefix, relative to `cfg.prefix`, sorted. `key_prefix` is a folder:
    list_keys(cfg, "runs/a") lists runs/a/..., not runs/ab/..."""
    key_prefix = key_prefix.rstrip("/")
    base = (full_key(cfg, key_prefix) + "/") if key_prefix else (f"{cfg.prefix}/" if cfg.prefix else "")
    strip = len(cfg.prefix) + 1 if cfg.prefix else 0
    s3 = client_or_new(cfg, client)
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=base):
            keys.extend(o["Key"][strip:] for o in page.get("Contents", []))
    except S3_ERRORS as e:
        raise fail("list_objects_v2", e, s3, cfg, base or None) from None
    return sorted(keys)


def upload_dir(cfg: StorageConfig, local_dir: str | Path, key_prefix: str, *, client=None) -> list[str]:
    """Upload every file under `local_dir` to prefix/key_prefix/<relative path>. Symlinked
    folders are not followed. Returns the keys written (relative to `cfg.prefix`), sorted."""
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"upload_dir: {root} is not a folder")
    key_prefix = _check_rel_key(key_prefix.rstrip("/"), "key_prefix") if key_prefix else ""
    files = []
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                key = f"{key_prefix}/{rel}" if key_prefix else rel
                files.append((p, _check_rel_key(key, "key from file name")))
    s3 = client_or_new(cfg, client)
    for p, key in sorted(files, key=lambda f: f[1]):
        put_file(cfg, key, p, client=s3)
    return sorted(k for _, k in files)


def download_dir(cfg: StorageConfig, key_prefix: str, local_dir: str | Path, *, client=None) -> list[Path]:
    """Download every object under prefix/key_prefix/ into `local_dir`, keeping the layout.
    An object key that would land outside `local_dir` ('..', absolute, empty segments) stops
    the download with StorageError before anything is written. Raises ObjectNotFound when
    nothing is under the prefix."""
    s3 = client_or_new(cfg, client)
    key_prefix = key_prefix.rstrip("/")
    keys = list_keys(cfg, key_prefix, client=s3)
    strip = len(key_prefix) + 1 if key_prefix else 0
    dest = Path(local_dir).resolve()
    plan = []
    for key in keys:
        rel = key[strip:]
        if rel == "" or rel.endswith("/"):
            continue   # a "folder" marker object: nothing to write
        try:
            _check_rel_key(rel, "object key")
        except ValueError as e:
            raise StorageError(f"download_dir s3://{cfg.bucket}/{full_key(cfg, key_prefix) if key_prefix else cfg.prefix}: "
                               f"refusing object {key!r}: {e}. Remove or rename that object.", code="UnsafeKey") from None
        target = (dest / rel).resolve()
        if not target.is_relative_to(dest):
            raise StorageError(f"download_dir: object {key!r} resolves outside {dest}; refusing", code="UnsafeKey")
        plan.append((key, target))
    if not plan:
        raise ObjectNotFound(f"download_dir {location(s3, cfg, full_key(cfg, key_prefix) if key_prefix else cfg.prefix or None)}: "
                             f"no objects under this prefix", code="NoSuchKey")
    for key, target in plan:
        get_file(cfg, key, target, client=s3)
    return [t for _, t in plan]


def put_if_absent(cfg: StorageConfig, key: str, body: bytes | str, *, content_type: str = "application/octet-stream",
                  client=None) -> bool:
    """Write the object only if the key does not exist yet: True if this call created it,
    False if it was already there (nothing is overwritten).

    Uses S3 conditional writes (PutObject with If-None-Match: *): atomic on the server, so of
    several concurrent writers exactly one gets True. SeaweedFS (the local stack), AWS S3 and
    MinIO honour it. A server that rejects the header raises StorageError (code NotImplemented)
    rather than silently overwriting. Caveat: if a first attempt succeeded but its response was
    lost and botocore retried, the retry sees the object and returns False; callers that need
    to know for sure put a unique token in `body` and compare with get_bytes on False."""
    if isinstance(body, str):
        body = body.encode()
    k = full_key(cfg, key)
    s3 = client_or_new(cfg, client)
    for attempt in range(1, cfg.max_attempts + 1):
        try:
            s3.put_object(Bucket=cfg.bucket, Key=k, Body=body, ContentType=content_type, IfNoneMatch="*")
            return True
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412:
                return False
            if (code == "ConditionalRequestConflict" or status == 409) and attempt < cfg.max_attempts:
                time.sleep(0.1 * attempt)   # AWS: a concurrent write is in flight; ask again
                continue
            raise fail("put_object(If-None-Match)", e, s3, cfg, k) from None
        except S3_ERRORS as e:
            raise fail("put_object(If-None-Match)", e, s3, cfg, k) from None
    raise AssertionError("unreachable")


__all__ = [
    "ObjectNotFound", "StorageConfig", "StorageError", "download_dir", "ensure_bucket", "exists",
    "full_key", "get_bytes", "get_file", "get_json", "list_keys", "put_bytes", "put_file",
    "put_if_absent", "put_json", "s3_client", "safe_key", "scrub", "upload_dir", "uri",
]
