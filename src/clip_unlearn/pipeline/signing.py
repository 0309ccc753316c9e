"""Ed25519 signatures over erasure certificates (audit.py holds what `unlearn report --verify` checks).

    generate_key(".stack/signing/ed25519.pem")    # once (infra/stack.sh start does it); file mode 600
    key = load_key()                              # from $CLIP_UNLEARN_SIGNING_KEY, or None: unsigned
    sig = sign(blob, key)                         # {"algorithm", "key_id", "public_key" (PEM), "value"}
    signature_ok(blob, sig, public_pem)           # False on any mismatch
    publish(storage_cfg, key)                     # s3://<bucket>/<prefix>/signing/<key_id>.pub, written once

What is signed is the certificate's canonical record (certificate.canonical_record): certificate.json
without "figures", "record_sha256" and "signature", as json.dumps(sort_keys=True, separators=(",", ":")).
The key id is the first 16 hex digits of the sha256 of the raw 32-byte public key. The private key
is only read from its file: nothing here logs, tags, uploads or returns it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clip_unlearn.core.schema import ConfigError
from clip_unlearn.pipeline import storage

ENV = "CLIP_UNLEARN_SIGNING_KEY"


def generate_key(path) -> Path:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM, readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path


def load_key(path=None) -> Ed25519PrivateKey | None:
    """The signing key from `path` or $CLIP_UNLEARN_SIGNING_KEY; None when neither is set."""
    path = path or os.environ.get(ENV)
    if not path:
        return None
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise ConfigError(f"{ENV}={path}: cannot read the signing key ({e.strerror})") from None
    except (ValueError, TypeError):  # never echo the file's content
        raise ConfigError(f"{ENV}={path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{ENV}={path}: not an Ed25519 key ({type(key).__name__})")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public(pem: str) -> Ed25519PublicKey:
    try:
        pub = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, AttributeError):
        raise ConfigError("not a PEM public key") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise ConfigError(f"not an Ed25519 public key ({type(pub).__name__})")
    return pub


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey | str) -> str:
    pub = load_public(key) if isinstance(key, str) else key
    pub = pub.public_key() if isinstance(pub, Ed25519PrivateKey) else pub
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def pem_key_id(pem: str | None) -> str | None:
    try:
        return key_id(pem) if pem else None
    except ConfigError:
        return "not-a-key"


def sign(blob: bytes, key: Ed25519PrivateKey) -> dict:
    return {"algorithm": "ed25519", "key_id": key_id(key), "public_key": public_pem(key),
            "value": base64.b64encode(key.sign(blob)).decode("ascii")}


def signature_ok(blob: bytes, sig: dict | None, pem: str) -> bool:
    """True when `sig` is an Ed25519 signature of `blob` by the key whose public PEM is `pem`."""
    try:
        load_public(pem).verify(base64.b64decode(sig["value"], validate=True), blob)
        return True
    except (InvalidSignature, ConfigError, KeyError, TypeError, ValueError):
        return False


def pub_key_name(kid: str) -> str:
    return f"signing/{kid}.pub"


def publish(cfg, key: Ed25519PrivateKey) -> str:
    """Put the public key in the bucket (never overwritten); its s3:// URI."""
    name = pub_key_name(key_id(key))
    storage.put_if_absent(cfg, name, public_pem(key), content_type="application/x-pem-file")
    return storage.uri(cfg, name)


def registry_tags(key: Ed25519PrivateKey) -> dict:
    return {"signing_key_id": key_id(key), "signing_public_key": public_pem(key)}
