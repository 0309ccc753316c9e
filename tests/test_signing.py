"""Signed certificates against real servers (SeaweedFS S3 + an MLflow tracking server): `unlearn
report ID --verify` catches a tampered certificate, another key and swapped weights, fails an
unsigned certificate, and the private key is never written anywhere but its own file."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import yaml
from conftest import LENIENT
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from clip_unlearn.cli import app
from clip_unlearn.core.models import WEIGHTS_FILE
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import signing, steps, storage
from clip_unlearn.pipeline.certificate import canonical_record
from clip_unlearn.pipeline.certificate.record import _canonical_sha256
from clip_unlearn.pipeline.registration import register_base
from clip_unlearn.pipeline.request_store import ErasureRequest

CHECKS = ["record hash", "registry", "signing key", "signature", "weights"]


@pytest.fixture
def env(tiny_params, stack, tiny_model_dir, tmp_path, monkeypatch):
    name = f"s-{uuid.uuid4().hex[:8]}"
    p = tiny_params.model_copy(update={
        "storage": tiny_params.storage.model_copy(update={"bucket": stack["bucket"], "prefix": f"t/{name}"}),
        "registry": tiny_params.registry.model_copy(update={"model_name": name, "experiment": "tests"}),
        "gate": tiny_params.gate.model_copy(update=LENIENT),
        "assurance": tiny_params.assurance.model_copy(update={"relearn_steps": 2, "relearn_batch_size": 8,
                                                              "relearn_eval_every": 1, "probe_max_iter": 10}),
        "erase": tiny_params.erase.model_copy(update={"workdir": str(tmp_path / "runs")}),
    })
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(json.loads(p.model_dump_json())))
    base = register_base(p, tiny_model_dir, log=lambda s: None)
    key = signing.generate_key(tmp_path / "keys" / "ed25519.pem")
    monkeypatch.setenv(signing.ENV, str(key))
    return {"params": p, "path": str(path), "name": name, "base": base, "key": key, "tmp": tmp_path,
            "client": reg.client(p.registry), "logs": []}


def erase(env, rid: str) -> dict:
    req = ErasureRequest(id=rid, requester="dpo@example.com", model=env["name"], dataset="digits",
                         classes=["seven"], method="projection", reason="signing test")
    job = steps.Job.create(env["params"], req, log=env["logs"].append)
    base = steps.fetch_base(job)
    out = steps.unlearn(job, base["model_dir"], None, base["lineage"])
    ver = steps.verify(job, base["model_dir"], out["model_dir"], out["result"], base["lineage"])
    return steps.certify(job, base, steps.register(job, base, out, ver))


def report(env, rid: str, *extra: str):
    res = CliRunner().invoke(app, ["report", rid, "--verify", "-p", env["path"], "--out", str(env["tmp"] / "dl"),
                                   *extra])
    env["logs"].append(res.output)
    lines = {line[:12].strip(): line[13:22].strip() for line in res.output.splitlines() if line[:12].strip() in CHECKS}
    return res.exit_code, lines, res.output


def test_verify_catches_tampering_other_keys_swapped_weights_and_unsigned(env, monkeypatch):
    p, name, c = env["params"], env["name"], env["client"]
    cert = erase(env, "r1")
    assert cert["verdict"] == "passed"
    code, lines, out = report(env, "r1")
    assert code == 0 and lines == dict.fromkeys(CHECKS, "ok"), out
    assert "every check matched" in out
    # public key: on the version (tag) and in the bucket, the same as the certificate's
    key = signing.load_key(env["key"])
    pem, kid = signing.public_pem(key), signing.key_id(key)
    tags = c.get_model_version(name, "2").tags
    assert tags["signing_key_id"] == kid and tags["signing_public_key"] == pem
    assert storage.get_bytes(p.storage, f"signing/{kid}.pub").decode() == pem
    key_name = "certificates/r1/certificate.json"
    original = storage.get_bytes(p.storage, key_name)
    signed = json.loads(original)
    assert signed["signature"]["key_id"] == kid

    # 1. a tampered certificate: one number changed
    forged = json.loads(original)
    forged["after"]["forget_top1"] = 0.4321
    storage.put_bytes(p.storage, key_name, json.dumps(forged).encode())
    code, lines, out = report(env, "r1")
    assert code == 1 and lines["record hash"] == "MISMATCH" and lines["signature"] == "MISMATCH", out
    # ... and with its record_sha256 recomputed: only the signature can tell
    forged["record_sha256"] = _canonical_sha256(forged)
    storage.put_bytes(p.storage, key_name, json.dumps(forged).encode())
    code, lines, out = report(env, "r1")
    assert code == 1 and lines["record hash"] == "ok" and lines["signature"] == "MISMATCH", out

    # 2. a wrong key: the forgery re-signed by another key that ships its own public key
    other = signing.load_key(signing.generate_key(env["tmp"] / "other.pem"))
    forged["signature"] = signing.sign(canonical_record(forged), other)
    storage.put_bytes(p.storage, key_name, json.dumps(forged).encode())
    code, lines, out = report(env, "r1")
    assert code == 1 and lines["signing key"] == "MISMATCH" and lines["signature"] == "MISMATCH", out
    assert f"certificate {signing.key_id(other)}" in out and f"registry tag {kid}" in out
    # the genuine certificate checked against a key the auditor was given that is not ours
    storage.put_bytes(p.storage, key_name, original)
    (env["tmp"] / "other.pub").write_text(signing.public_pem(other))
    code, lines, out = report(env, "r1", "--public-key", str(env["tmp"] / "other.pub"))
    assert code == 1 and lines["signature"] == "MISMATCH" and lines["weights"] == "ok", out
    code, lines, out = report(env, "r1")
    assert code == 0, out

    # 3. swapped weights: v2's weights in MLflow's artifact store (in the bucket, behind the tracking
    # server) replaced by the base's
    bucket = p.storage.model_copy(update={"prefix": ""})
    keys = storage.list_keys(bucket, "mlflow/")

    def weights_key(version: str) -> str:
        mid = reg.model_id(c.get_model_version(name, version))
        (key,) = [k for k in keys if mid in k and k.endswith(WEIGHTS_FILE)]
        return key

    v2, v1 = weights_key("2"), weights_key("1")
    genuine = storage.get_bytes(bucket, v2)
    storage.put_bytes(bucket, v2, storage.get_bytes(bucket, v1))
    code, lines, out = report(env, "r1")
    assert code == 1 and lines["weights"] == "MISMATCH" and lines["signature"] == "ok", out
    assert env["base"]["sha256"][:16] in out
    storage.put_bytes(bucket, v2, genuine)
    assert report(env, "r1")[0] == 0

    # 4. no key configured: the erasure still works, the certificate says unsigned, --verify fails it
    monkeypatch.delenv(signing.ENV)
    cert = erase(env, "r2")
    assert cert["verdict"] == "passed" and "UNSIGNED" in (env["tmp"] / "runs" / "r2" / "certificate" /
                                                           "certificate.html").read_text()
    assert json.loads(storage.get_bytes(p.storage, "certificates/r2/certificate.json"))["signature"] is None
    code, lines, out = report(env, "r2")
    assert code == 1 and lines["signature"] == "MISMATCH" and "unsigned" in out and lines["weights"] == "ok", out
    assert "signing_key_id" not in c.get_model_version(name, "3").tags

    # the private key never appears in a log, a tag, a run, a certificate or any object in the bucket
    secret = env["key"].read_bytes()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    needles = [secret.split(b"\n")[1], raw, raw.hex().encode(), base64.b64encode(raw)]
    blobs = ["\n".join(env["logs"]).encode()]
    for mv in reg.versions(c, name):
        blobs.append(json.dumps(mv.tags).encode())
        if mv.run_id:
            run = c.get_run(mv.run_id)
            blobs.append(json.dumps([run.data.params, run.data.tags]).encode())
    blobs += [storage.get_bytes(p.storage, k) for k in storage.list_keys(p.storage, "")]
    assert len(blobs) > 10
    for blob in blobs:
        assert not any(n in blob for n in needles)
