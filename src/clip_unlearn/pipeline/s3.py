"""The S3 client, its settings and its errors: credentials only from boto3's chain, never in a
message; every failure a StorageError that names endpoint, bucket and key and says what to do.

    client = s3_client(StorageConfig(bucket="clip-unlearn"))
    raise fail("put", exc, client, cfg, key)      # botocore exception -> StorageError
    scrub(text)                                   # any credential of the environment -> ***
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import Literal

import boto3
from boto3.exceptions import Boto3Error
from botocore import exceptions as bx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, field_validator

from clip_unlearn.core.schema import Section

# What boto3/botocore/s3transfer raise; anything else (a bug, a local OSError) passes through.
S3_ERRORS = (ClientError, BotoCoreError, Boto3Error)

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
                             f"(credentials come from the environment); got {redact_url(v)!r}")
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
                check_id(part, what="prefix segment")
        return v


def check_id(part: str, what: str = "key part") -> str:
    if not isinstance(part, str) or not _ID.fullmatch(part) or ".." in part:
        raise ValueError(f"{what} {part!r} is not allowed: use only letters, digits, '.', '_', '-' "
                         f"(no '/', no '..', not empty)")
    return part


def s3_client(cfg: StorageConfig):
    """A boto3 S3 client with bounded retries and timeouts; endpoint as described above."""
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


def client_or_new(cfg: StorageConfig, client):
    return client if client is not None else s3_client(cfg)


def _secrets() -> list[str]:
    return [v for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
            if len(v := os.environ.get(k, "")) >= 4]


def scrub(text: str) -> str:
    """The text with any credential from the environment replaced (for errors, logs, reasons)."""
    for s in _secrets():
        text = text.replace(s, "***")
    return text


def redact_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def location(client, cfg: StorageConfig, key: str | None) -> str:
    endpoint = redact_url(getattr(getattr(client, "meta", None), "endpoint_url", None) or "AWS default endpoint")
    target = f"s3://{cfg.bucket}/{key}" if key else f"s3://{cfg.bucket}"
    return f"{target} at {endpoint}"


_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it with clip_unlearn.pipeline.storage.ensure_bucket(cfg) "
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


def fail(op: str, exc: Exception, client, cfg: StorageConfig, key: str | None = None) -> StorageError:
    """Turn a botocore exception into a StorageError that says where and what to do."""
    where = location(client, cfg, key)
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


def is_not_found(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")
