"""The erasure certificate's record: one verifiable, signed JSON and the files beside it.

    paths = write_certificate(record, "reports/req-7", key=signing.load_key())   # key None: unsigned
    verify_certificate(paths["json"])                    # True unless the JSON was edited

Only what is in `record` goes into the certificate. certificate.json holds the record (assurance figure
paths replaced by the copied file names) plus "figures", "record_sha256" (the sha256 of canonical_record:
json.dumps(stored record, sort_keys=True, separators=(",", ":"), default=str)) and "signature" (Ed25519
over the same bytes, see signing.py; null when no key was configured). Figure bytes are not hashed.
certificate.html renders the same record (render.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

from clip_unlearn.pipeline.certificate.figures import plot_per_class
from clip_unlearn.pipeline.certificate.files import atomic_write
from clip_unlearn.pipeline.certificate.render import IMAGE_TYPES, render_html
from clip_unlearn.pipeline.signing import sign

_RESERVED = {"json", "html", "per_class"}
_NOT_RECORD = ("figures", "record_sha256", "signature")  # certificate.json keys outside the record


def canonical_record(cert: dict) -> bytes:
    """The bytes that are hashed and signed: the record without figures, hash and signature."""
    record = {k: v for k, v in cert.items() if k not in _NOT_RECORD}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def _canonical_sha256(record: dict) -> str:
    return hashlib.sha256(canonical_record(record)).hexdigest()


def write_certificate(record: dict, out_dir, key=None) -> dict[str, Path]:
    """per_class.png, copied assurance figures, certificate.json and certificate.html, each written atomically.
    With `key` (an Ed25519 private key, signing.load_key()) the record is signed; without, "signature" is null."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = json.loads(json.dumps(record, default=str))  # deep copy, as a reader of the JSON will see it
    for k in _NOT_RECORD:
        stored.pop(k, None)
    paths: dict[str, Path] = {}
    names: dict[str, str] = {}
    embed: dict[str, Path] = {}  # render_html's figures: "per_class" + assurance names
    forgotten = (stored.get("request") or {}).get("classes") or []
    paths["per_class"] = plot_per_class((stored.get("before") or {}).get("per_class"),
                                        (stored.get("after") or {}).get("per_class"), forgotten,
                                        out / "per_class.png")
    names["per_class"] = "per_class.png"
    for name, entry in (stored.get("assurance") or {}).items():
        src = Path(entry["figure"]) if isinstance(entry, dict) and entry.get("figure") else None
        if src is None or not src.is_file():
            continue
        fig = re.sub(r"[^A-Za-z0-9_-]", "_", str(name))
        fig = f"assurance_{fig}" if fig in _RESERVED or fig in paths else fig
        dst = out / f"{fig}{src.suffix.lower() if src.suffix.lower() in IMAGE_TYPES else '.png'}"
        if src.resolve() != dst.resolve():
            atomic_write(dst, src.read_bytes())
        entry["figure"] = dst.name
        paths[fig], names[fig], embed[str(name)] = dst, dst.name, dst
    sig = None
    if key is not None:
        sig = sign(canonical_record(stored), key)
    cert = {**stored, "figures": names, "record_sha256": _canonical_sha256(stored), "signature": sig}
    paths["json"] = atomic_write(out / "certificate.json",
                                  json.dumps(cert, indent=2, sort_keys=True, default=str).encode("utf-8"))
    figures = {"per_class": paths["per_class"], **embed}
    paths["html"] = atomic_write(out / "certificate.html", render_html(cert, figures).encode("utf-8"))
    return paths


def verify_certificate(path) -> bool:
    """True when certificate.json's record still hashes to its record_sha256."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    expected = data.get("record_sha256")
    return isinstance(expected, str) and hmac.compare_digest(_canonical_sha256(data), expected)
