"""`unlearn report --verify`: a downloaded certificate checked against the registry and S3.

    for check, matched, detail in audit(params, "runs/reports/req-7/certificate.json"):
        ...   # record hash, registry version, signing key, signature, weights
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from clip_unlearn.core.models import REGISTERED_ARTIFACT, WEIGHTS_FILE, file_sha256
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import storage
from clip_unlearn.pipeline.certificate import canonical_record, verify_certificate
from clip_unlearn.pipeline.signing import pem_key_id, pub_key_name, signature_ok


def audit(params, cert_path, trusted_pem: str | None = None) -> list[tuple[str, bool, str]]:
    """Check a downloaded certificate.json against the registry and S3: (check, matched, what was
    compared). The trusted public key is `trusted_pem` (e.g. from `--public-key`) or the one the
    registry recorded on the version; the key embedded in the certificate is never trusted alone."""
    cert = json.loads(Path(cert_path).read_text(encoding="utf-8"))
    model, req = cert.get("model") or {}, cert.get("request") or {}
    ok = verify_certificate(cert_path)
    rs = f"record_sha256 {str(cert.get('record_sha256'))[:16]}..."
    out = [("record hash", ok, f"the record hashes to its {rs}" if ok else
            f"the record does not hash to its {rs}: it was changed after it was written")]
    found = reg.find(reg.client(params.registry), str(model.get("name")), request_id=str(req.get("id")))
    if not found:
        return out + [("registry", False, f"no version of {model.get('name')!r} carries request_id {req.get('id')!r}")]
    mv = found[0]
    tags = mv.tags or {}
    out.append(("registry", str(mv.version) == str(model.get("version")),
                f"request {req.get('id')} is {mv.name} v{mv.version}; the certificate says v{model.get('version')}"))

    sig = cert.get("signature")
    reg_pem = tags.get("signing_public_key")
    trusted = trusted_pem or reg_pem
    if not isinstance(sig, dict):
        out.append(("signature", False, "unsigned: no signing key was configured when the certificate was made"))
    elif not trusted:
        out.append(("signature", False, f"{mv.name} v{mv.version} has no signing_public_key tag to check against"))
    else:
        kid = pem_key_id(trusted)
        published = storage.get_bytes(params.storage, pub_key_name(kid)).decode(errors="replace") \
            if storage.exists(params.storage, pub_key_name(kid)) else None
        ids = {"certificate": sig.get("key_id"), "trusted key": kid, "registry tag": tags.get("signing_key_id"),
               "bucket": pem_key_id(published)}
        out.append(("signing key", len(set(ids.values())) == 1,
                    ", ".join(f"{k} {v or 'none'}" for k, v in ids.items())
                    + f" ({storage.uri(params.storage, pub_key_name(kid))})"))
        valid = signature_ok(canonical_record(cert), sig, trusted)
        out.append(("signature", valid, f"Ed25519 over the canonical record, checked with key {kid} "
                    f"({'--public-key' if trusted_pem else 'registry tag signing_public_key'})"
                    + ("" if valid else ": does not verify (record changed, or signed by another key)")))

    want, cert_sha = tags.get("weights_sha256"), model.get("new_sha256")
    got, where = _stored_weights_sha256(params, mv)
    if got is None:
        return out + [("weights", False, where)]
    if got == want == cert_sha:
        out.append(("weights", True, f"stored weights, registry weights_sha256 and certificate model.new_sha256 are "
                                     f"all {got[:16]}... ({where})"))
    else:
        out.append(("weights", False, f"stored weights {got[:16]}..., registry weights_sha256 {str(want)[:16]}..., "
                                      f"certificate model.new_sha256 {str(cert_sha)[:16]}... ({where})"))
    return out


def _stored_weights_sha256(params, mv) -> tuple[str | None, str]:
    """(sha256 of the version's weights as stored, where they are), or (None, why not): an MLflow model's
    artifact through the tracking server, an older version's object in S3."""
    with tempfile.TemporaryDirectory() as tmp:
        if reg.is_mlflow_model(mv):
            from mlflow.artifacts import download_artifacts  # heavy: MLflow's client

            uri = f"models:/{mv.name}/{mv.version}/{REGISTERED_ARTIFACT}/{WEIGHTS_FILE}"
            tracking = reg.tracking_uri(params.registry)
            return file_sha256(download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking,
                                                  registry_uri=tracking)), uri
        root = storage.uri(params.storage)
        if not mv.source.startswith(root + "/"):
            return None, f"{mv.source} is outside {root}"
        key = f"{mv.source[len(root) + 1:]}/{WEIGHTS_FILE}"
        try:
            return file_sha256(storage.get_file(params.storage, key, Path(tmp) / WEIGHTS_FILE)), storage.uri(params.storage, key)
        except storage.ObjectNotFound:
            return None, f"no object at {storage.uri(params.storage, key)}"
