"""S3 access for artifacts: plain functions on a `StorageConfig`, boto3 underneath.

    from clip_unlearn.storage import StorageConfig, put_json, get_json, safe_key
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

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, field_validator

from clip_unlearn.schema import Section

# What boto3/botocore/s3transfer raise; anything else (a bug, a local OSError) passes through.
_S3_ERRORS = (ClientError, BotoCoreError, Boto3Error)

_ID = re.compile(r"[A-Za-z0-9._-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_LOCAL_STACK_HINT = 'for the local stack: eval "$(bash infra/stack.sh env)"'


class StorageError(RuntimeError):
    """An S3 operation that failed; the message names endpoint, bucket, key and a remedy.
    `code` is the S3 error code when the server sent one (e.g. "NoSuchBucket")."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(scrub(message))
        self.code = code


class ObjectNotFound(StorageError, FileNotFoundError):
    """The key does not exist in the bucket."""


class StorageConfig(Section):
    """Where artifacts live. Credentials are deliberately not a field (boto3's chain only)."""

    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://127.0.0.1:8333; None: AWS_ENDPOINT_URL_S3 / "
                          "AWS_ENDPOINT_URL from the environment, else AWS")
    bucket: str = "clip-unlearn"
    prefix: str = Field("", description="every key lives under this prefix ('' = bucket root)")
    region: str | None = Field(None, description="None: boto3's chain (AWS_DEFAULT_REGION), else us-east-1")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="auto: path-style for a custom endpoint, boto3's choice on AWS")
    max_attempts: int = Field(4, ge=1, le=20, description="total tries per request (botocore standard retries)")
    connect_timeout: float = Field(5.0, gt=0, le=300)
    read_timeout: float = Field(60.0, gt=0, le=3600)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.fullmatch(r"https?://[^/\s@]+(/.*)?", v):
            raise ValueError(f"endpoint_url must look like http(s)://host:port without user:password@ "
                             f"(credentials come from the environment); got {_redact_url(v)!r}")
        return v.rstrip("/")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET.fullmatch(v) or ".." in v:
            raise ValueError(f"bucket {v!r} is not a valid S3 bucket name (3-63 characters: a-z 0-9 . -)")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if v:
            for part in v.split("/"):
                _check_id(part, what="prefix segment")
        return v


# ---- keys ----------------------------------------------------------------------------------

def _check_id(part: str, what: str = "key part") -> str:
    if not isinstance(part, str) or not _ID.fullmatch(part) or ".." in part:
        raise ValueError(f"{what} {part!r} is not allowed: use only letters, digits, '.', '_', '-' "
                         f"(no '/', no '..', not empty)")
    return part


def safe_key(*parts: str) -> str:
    """Join ids into a key, refusing anything but [A-Za-z0-9._-] and any '..'.
    safe_key("runs", run_id, "metrics.json") -> "runs/<run_id>/metrics.json"."""
    if not parts:
        raise ValueError("safe_key needs at least one part")
    return "/".join(_check_id(p) for p in parts)


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


# ---- client and errors ---------------------------------------------------------------------

def s3_client(cfg: StorageConfig):
    """A boto3 S3 client with bounded retries and timeouts; endpoint as described above."""
    import boto3
    from botocore.config import Config

    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    style = cfg.addressing_style
    if style == "auto" and endpoint:
        style = "path"   # S3-compatible servers on host:port have no per-bucket DNS names
    config = Config(
        # botocore's "max_attempts" counts retries (it adds the first try); total_max_attempts is
        # the same setting counted as total tries, which is what StorageConfig.max_attempts means.
        retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        s3={"addressing_style": style},
    )
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    if region is None and endpoint:
        region = "us-east-1"
    with _LOCK:  # boto3 sessions are not thread-safe; the clients they make are
        return _session(boto3).client("s3", endpoint_url=endpoint, region_name=region, config=config)


# A boto3 session loads its service models once (~0.2 s) and then makes clients in ~10 ms, but
# it also keeps the credentials it first resolved. One session is kept per state of the
# credential-related environment, so changed credentials are picked up. Only a hash is kept.
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ROLE_ARN",
             "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_EC2_METADATA_DISABLED")
_LOCK = threading.Lock()
_SESSION: list = []  # [(fingerprint, session)]


def _session(boto3):
    fingerprint = hashlib.sha256("\0".join(os.environ.get(k, "") for k in _CRED_ENV).encode()).hexdigest()
    if not _SESSION or _SESSION[0][0] != fingerprint:
        _SESSION[:] = [(fingerprint, boto3.session.Session())]
    return _SESSION[0][1]


def _client(cfg: StorageConfig, client):
    return client if client is not None else s3_client(cfg)


def _secrets() -> list[str]:
    return [v for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
            if len(v := os.environ.get(k, "")) >= 4]


def scrub(text: str) -> str:
    """The text with any credential from the environment replaced (for errors, logs, reasons)."""
    for s in _secrets():
        text = text.replace(s, "***")
    return text


def _redact_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def _where(client, cfg: StorageConfig, key: str | None) -> str:
    endpoint = _redact_url(getattr(getattr(client, "meta", None), "endpoint_url", None) or "AWS default endpoint")
    target = f"s3://{cfg.bucket}/{key}" if key else f"s3://{cfg.bucket}"
    return f"{target} at {endpoint}"


_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it with clip_unlearn.storage.ensure_bucket(cfg) "
                    "(the local stack creates it at `bash infra/stack.sh start`) or fix StorageConfig.bucket",
    "InvalidAccessKeyId": f"the server does not know this access key: check AWS_ACCESS_KEY_ID ({_LOCAL_STACK_HINT})",
    "SignatureDoesNotMatch": f"the secret key does not match the access key: check AWS_SECRET_ACCESS_KEY "
                             f"({_LOCAL_STACK_HINT})",
    "AccessDenied": "access denied: the credentials are wrong or may not use this bucket or key "
                    f"(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; {_LOCAL_STACK_HINT})",
    "InvalidBucketName": "the bucket name is not valid on this server",
    "NotImplemented": "this S3 server does not implement the request (e.g. conditional writes)",
    "SlowDown": "the server is throttling; retry later or raise StorageConfig.max_attempts",
}


def _fail(op: str, exc: Exception, client, cfg: StorageConfig, key: str | None = None) -> StorageError:
    """Turn a botocore exception into a StorageError that says where and what to do."""
    from botocore import exceptions as bx  # the specific classes below

    where = _where(client, cfg, key)
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(err.get("Code") or status or "Unknown")
        if code in ("NoSuchKey", "404", "NotFound") and key is not None and op != "head_bucket":
            return ObjectNotFound(f"{op} {where}: no such key", code="NoSuchKey")
        if code in ("404", "NotFound") and (op == "head_bucket" or key is None):
            code = "NoSuchBucket"
        if code == "403" and op.startswith("head"):
            code = "AccessDenied"   # HEAD responses carry no body, hence no error code
        msg = str(err.get("Message") or "").strip()
        hint = _HINTS.get(code, "see the server's log")
        return StorageError(f"{op} {where} failed: {code}{' (' + msg + ')' if msg else ''}. {hint}.", code=code)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StorageError(f"{op} {where}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY ({_LOCAL_STACK_HINT}).", code="NoCredentials")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return StorageError(f"{op} {where}: cannot connect to the endpoint after {cfg.max_attempts} attempt(s). "
                            f"Is the S3 server running? (local stack: `bash infra/stack.sh status`; "
                            f"otherwise check endpoint_url / AWS_ENDPOINT_URL)", code="EndpointConnectionError")
    if isinstance(exc, bx.ReadTimeoutError):
        return StorageError(f"{op} {where}: the server did not answer within {cfg.read_timeout} s "
                            f"({cfg.max_attempts} attempt(s)); raise StorageConfig.read_timeout for large "
                            f"objects or check the server", code="ReadTimeout")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"{op} {where}: {type(exc).__name__}: {exc}", code=type(exc).__name__)
    return StorageError(f"{op} {where}: {type(exc).__name__}: {exc}")


def _is_not_found(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")


# ---- operations ----------------------------------------------------------------------------

def ensure_bucket(cfg: StorageConfig, client=None) -> bool:
    """Create the bucket if it does not exist. True when it was created."""
    s3 = _client(cfg, client)
    try:
        s3.head_bucket(Bucket=cfg.bucket)
        return False
    except ClientError as e:
        if str(e.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
            raise _fail("head_bucket", e, s3, cfg) from None
    except BotoCoreError as e:
        raise _fail("head_bucket", e, s3, cfg) from None
    kwargs: dict[str, Any] = {"Bucket": cfg.bucket}
    region = s3.meta.region_name
    if region and region not in ("us-east-1", "aws-global"):
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",):
            return False
        raise _fail("create_bucket", e, s3, cfg) from None
    except BotoCoreError as e:
        raise _fail("create_bucket", e, s3, cfg) from None
    return True


def put_bytes(cfg: StorageConfig, key: str, body: bytes, *, content_type: str = "application/octet-stream",
              client=None) -> str:
    """Write an object (overwrites). Returns its s3:// URI."""
    k = full_key(cfg, key)
    s3 = _client(cfg, client)
    try:
        s3.put_object(Bucket=cfg.bucket, Key=k, Body=body, ContentType=content_type)
    except _S3_ERRORS as e:
        raise _fail("put_object", e, s3, cfg, k) from None
    return f"s3://{cfg.bucket}/{k}"


def get_bytes(cfg: StorageConfig, key: str, *, client=None) -> bytes:
    k = full_key(cfg, key)
    s3 = _client(cfg, client)
    try:
        return s3.get_object(Bucket=cfg.bucket, Key=k)["Body"].read()
    except _S3_ERRORS as e:
        raise _fail("get_object", e, s3, cfg, k) from None


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
    s3 = _client(cfg, client)
    try:
        s3.upload_file(str(path), cfg.bucket, k)
    except _S3_ERRORS as e:
        raise _fail("upload_file", _unwrap(e), s3, cfg, k) from None
    return f"s3://{cfg.bucket}/{k}"


def get_file(cfg: StorageConfig, key: str, path: str | Path, *, client=None) -> Path:
    """Download an object to `path` (parents created; written to a temporary name, then renamed)."""
    path = Path(path)
    k = full_key(cfg, key)
    s3 = _client(cfg, client)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3.download_file(cfg.bucket, k, str(path))
    except _S3_ERRORS as e:
        e = _unwrap(e)
        if _is_not_found(e):
            _require_bucket(cfg, s3)   # a HEAD 404 does not say whether the bucket is missing
        raise _fail("download_file", e, s3, cfg, k) from None
    return path


def _unwrap(exc: Exception) -> Exception:
    """s3transfer wraps some botocore errors; return the botocore one when there is one."""
    seen = exc
    while seen is not None and not isinstance(seen, ClientError | BotoCoreError):
        seen = seen.__cause__ or seen.__context__
    return seen or exc


def exists(cfg: StorageConfig, key: str, *, client=None) -> bool:
    k = full_key(cfg, key)
    s3 = _client(cfg, client)
    try:
        s3.head_object(Bucket=cfg.bucket, Key=k)
        return True
    except _S3_ERRORS as e:
        if _is_not_found(e):
            # A HEAD 404 does not say whether the key or the bucket is missing: ask.
            _require_bucket(cfg, s3)
            return False
        raise _fail("head_object", e, s3, cfg, k) from None


def _require_bucket(cfg: StorageConfig, s3) -> None:
    try:
        s3.head_bucket(Bucket=cfg.bucket)
    except _S3_ERRORS as e:
        raise _fail("head_bucket", e, s3, cfg) from None


def list_keys(cfg: StorageConfig, key_prefix: str = "", *, client=None) -> list[str]:
    """Keys under prefix/key_prefix, relative to `cfg.prefix`, sorted. `key_prefix` is a folder:
    list_keys(cfg, "runs/a") lists runs/a/..., not runs/ab/..."""
    key_prefix = key_prefix.rstrip("/")
    base = (full_key(cfg, key_prefix) + "/") if key_prefix else (f"{cfg.prefix}/" if cfg.prefix else "")
    strip = len(cfg.prefix) + 1 if cfg.prefix else 0
    s3 = _client(cfg, client)
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=base):
            keys.extend(o["Key"][strip:] for o in page.get("Contents", []))
    except _S3_ERRORS as e:
        raise _fail("list_objects_v2", e, s3, cfg, base or None) from None
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
    s3 = _client(cfg, client)
    for p, key in sorted(files, key=lambda f: f[1]):
        put_file(cfg, key, p, client=s3)
    return sorted(k for _, k in files)


def download_dir(cfg: StorageConfig, key_prefix: str, local_dir: str | Path, *, client=None) -> list[Path]:
    """Download every object under prefix/key_prefix/ into `local_dir`, keeping the layout.
    An object key that would land outside `local_dir` ('..', absolute, empty segments) stops
    the download with StorageError before anything is written. Raises ObjectNotFound when
    nothing is under the prefix."""
    s3 = _client(cfg, client)
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
        raise ObjectNotFound(f"download_dir {_where(s3, cfg, full_key(cfg, key_prefix) if key_prefix else cfg.prefix or None)}: "
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
    s3 = _client(cfg, client)
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
            raise _fail("put_object(If-None-Match)", e, s3, cfg, k) from None
        except _S3_ERRORS as e:
            raise _fail("put_object(If-None-Match)", e, s3, cfg, k) from None
    raise AssertionError("unreachable")


__all__ = [
    "ObjectNotFound", "StorageConfig", "StorageError", "download_dir", "ensure_bucket", "exists",
    "full_key", "get_bytes", "get_file", "get_json", "list_keys", "put_bytes", "put_file",
    "put_if_absent", "put_json", "s3_client", "safe_key", "scrub", "upload_dir", "uri",
]
