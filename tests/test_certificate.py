"""Erasure certificate: what a reader sees first, files, escaping, determinism, integrity hash,
signature, optional parts."""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest
import torch

from clip_unlearn.pipeline import signing
from clip_unlearn.pipeline.certificate import (
    canonical_record,
    format_table,
    plot_per_class,
    render_html,
    verify_certificate,
    write_certificate,
)

torch.set_num_threads(1)

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _png(path, shade: int = 0):
    """A tiny valid-enough PNG stand-in (content only needs to survive the copy + base64)."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([shade]) * 32)
    return path


def _record(tmp_path, **over) -> dict:
    rec = {
        "request": {"id": "req-7", "requester": "alice@example.com", "model": "clip-ref", "dataset": "digits",
                    "classes": ["seven"], "where": {}, "method": "subgroup", "reason": "GDPR art. 17",
                    "thresholds": None},
        "model": {"name": "clip-ref", "version": "3", "base_version": "1", "base_sha256": "ab" * 32,
                  "new_sha256": "cd" * 32, "uri": "models:/clip-ref/3"},
        "method": {"name": "auto", "chosen": "subgroup", "kind": "reads forgotten data",
                   "config": {"order": ["text_edit", "subgroup"], "allow_forgotten_data": True,
                              "inner": {"steps": 50, "lr": 1e-4}}, "seconds": 41.23456789,
                   "attempts": [{"method": "text_edit", "data_free": True, "passed_val": False,
                                 "val": {"forget_top1": 0.31234, "retain_top1": 0.9, "other_top1": 0.95},
                                 "seconds": 2.5, "failed": ["forget_top1 = 0.3123 violates after <= 0.05"]},
                                {"method": "subgroup", "data_free": False, "passed_val": True,
                                 "val": {"forget_top1": 0.02, "retain_top1": 0.89, "other_top1": 0.95},
                                 "seconds": 38.7, "failed": []}]},
        "before": {"forget_top1": 0.91, "retain_top1": 0.90, "other_top1": 0.955, "other": {"shapes": 0.955},
                   "per_class": {c: 0.9 for c in CLASSES}, "n_forget": 216, "n_retain": 1938},
        "after": {"forget_top1": 0.023, "retain_top1": 0.887, "other_top1": 0.951, "other": {"shapes": 0.951},
                  "per_class": {**{c: 0.89 for c in CLASSES}, "seven": 0.023, "nine": None},
                  "n_forget": 216, "n_retain": 1938},
        "thresholds": {"forget_max": 0.05, "retain_drop_max": 0.03, "other_drop_max": None},
        "checks": [{"name": "forget_top1", "rule": "after <= 0.05", "value": 0.023, "limit": 0.05, "passed": True},
                   {"name": "retain_drop", "rule": "before - after <= 0.03", "value": 0.013, "limit": 0.03,
                    "passed": True},
                   {"name": "lineage:req-3", "rule": "earlier erasure req-3 (digits:three, v2) stays forgotten",
                    "value": 0.0277, "limit": 0.05, "passed": True},
                   {"name": "relearn_forget_top1", "rule": "max <= 0.2", "value": 0.05, "limit": 0.2, "passed": True}],
        "lineage": [{"request_id": "req-3", "forgotten": "digits:three", "version": "2", "limit": 0.05,
                     "value": 0.0277, "passed": True}],
        "verdict": "passed",
        "assurance": {
            "relearn": {"passed": True, "verdict_reason": "stays forgotten",
                        "forget_top1_curve": [[0, 0.02], [25, 0.03], [50, 0.05]], "threshold": 0.2,
                        "forget_top1_max": 0.05,
                        "figure": str(_png(tmp_path / "src_relearn.png", 1))},
            "probe": {"passed": False, "gate": False, "base_balanced_accuracy": 0.9953703703703703,
                      "new_balanced_accuracy": 0.47685185185185186, "chance": 0.5,
                      "base_accuracy": 0.99, "new_accuracy": 0.80,
                      "figure": str(_png(tmp_path / "src_probe.png", 2))}},
        "data_versions": {"digits": {"dvc_md5": "11" * 16, "sha256": "22" * 32}},
        "code_version": {"git_commit": "deadbeef", "dirty": False, "package_version": "0.1.0"},
        "created_at": "2026-11-24T10:00:00+00:00",
    }
    rec.update(over)
    return rec


def test_write_certificate_files_and_html(tmp_path):
    rec = _record(tmp_path)
    paths = write_certificate(rec, tmp_path / "out" / "req-7")
    for key, name in (("json", "certificate.json"), ("html", "certificate.html"), ("per_class", "per_class.png")):
        assert paths[key].name == name and paths[key].is_file()
    assert not [p for p in paths["json"].parent.iterdir() if p.name.endswith(".tmp")]
    page = paths["html"].read_text(encoding="utf-8")
    assert 'Verdict: <span class="pass">PASSED</span>' in page and "#2a8a2a" in page and "req-7" in page and "clip-ref" in page
    assert "ab" * 32 in page and "cd" * 32 in page and "deadbeef" in page and "2026-11-24T10:00:00+00:00" in page
    assert "GDPR art. 17" in page and "alice@example.com" in page and "seven" in page
    assert "-88.7" in page  # forget 0.910 -> 0.023
    assert page.count("data:image/png;base64,") == 3  # per-class + relearn + probe
    assert 'class="fail"' not in page  # the probe failed, but it is informational: never in the failure colour
    assert "http://" not in page and "https://" not in page  # self-contained


def test_failed_verdict_is_red(tmp_path):
    page = render_html(_record(tmp_path, verdict="failed", assurance=None), {})
    assert 'Verdict: <span class="fail">FAILED</span>' in page and "#c62828" in page
    assert 'Verdict: <span class="pass">' not in page


def test_values_are_escaped(tmp_path):
    evil = '<script>alert("x")</script>'
    rec = _record(tmp_path)
    rec["request"] |= {"requester": evil, "reason": evil, "classes": [evil]}
    rec["model"]["name"] = evil
    rec["checks"][0]["rule"] = evil
    rec["data_versions"] = {evil: {"sha256": evil}}
    rec["before"]["other"] = {evil: 0.5}
    page = write_certificate(rec, tmp_path / "out")["html"].read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page   # markupsafe escapes " as &#34;


def test_per_class_png_is_deterministic(tmp_path):
    rec = _record(tmp_path)
    args = (rec["before"]["per_class"], rec["after"]["per_class"], ["seven"])
    a = plot_per_class(*args, tmp_path / "a.png").read_bytes()
    b = plot_per_class(*args, tmp_path / "b" / "b.png").read_bytes()
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a == b
    assert b"Software" not in a and b"matplotlib" not in a.lower()
    c = plot_per_class(*args[:2], [], tmp_path / "c.png").read_bytes()
    assert c != a  # highlighting changes the picture


def test_json_round_trip_and_tamper(tmp_path):
    rec = _record(tmp_path)
    original = copy.deepcopy(rec)
    paths = write_certificate(rec, tmp_path / "out")
    assert rec == original  # the caller's record is not modified
    cert = json.loads(paths["json"].read_text())
    assert verify_certificate(paths["json"])
    assert cert["figures"] == {"per_class": "per_class.png", "relearn": "relearn.png", "probe": "probe.png"}
    assert cert["assurance"]["relearn"]["figure"] == "relearn.png"
    assert cert["after"]["forget_top1"] == 0.023 and cert["request"]["requester"] == "alice@example.com"
    assert len(cert["record_sha256"]) == 64
    # copied assurance figures, byte for byte, and embedded in the page
    out = paths["json"].parent
    assert (out / "relearn.png").read_bytes() == (tmp_path / "src_relearn.png").read_bytes()
    assert paths["probe"] == out / "probe.png"
    page = paths["html"].read_text()
    assert base64.b64encode((tmp_path / "src_probe.png").read_bytes()).decode() in page
    # tamper with one number
    cert["after"]["forget_top1"] = 0.001
    paths["json"].write_text(json.dumps(cert, indent=2))
    assert not verify_certificate(paths["json"])
    # changing only the figures listing does not matter; dropping the hash does
    cert["after"]["forget_top1"] = 0.023
    cert["figures"] = {}
    paths["json"].write_text(json.dumps(cert))
    assert verify_certificate(paths["json"])
    del cert["record_sha256"]
    paths["json"].write_text(json.dumps(cert))
    assert not verify_certificate(paths["json"])


def test_hash_is_canonical_json_of_record(tmp_path):
    import hashlib
    rec = _record(tmp_path, assurance=None)
    cert = json.loads(write_certificate(rec, tmp_path / "out")["json"].read_text())
    blob = json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str)
    assert cert["record_sha256"] == hashlib.sha256(blob.encode()).hexdigest()


def test_minimal_record_still_renders(tmp_path, monkeypatch):
    monkeypatch.setenv("CERT_SECRET_TOKEN", "hunter2-do-not-leak")
    rec = {"request": {"id": "req-1", "classes": ["three"], "where": {"style": "thin"}},
           "before": {"forget_top1": 0.8, "retain_top1": 0.9, "per_class": {"three": 0.8, "four": None},
                      "subgroup_rest_top1": 0.85, "other_classes_top1": 0.91},
           "after": {"forget_top1": 0.1, "retain_top1": 0.88, "per_class": {"three": float("nan")},
                     "subgroup_rest_top1": 0.84, "other_classes_top1": 0.9},
           "verdict": "failed"}
    paths = write_certificate(rec, tmp_path / "new" / "dir")
    assert set(paths) == {"json", "html", "per_class"}
    page = paths["html"].read_text()
    assert 'class="fail">FAILED' in page and "class three of dataset" in page and "where style=thin" in page
    assert "subgroup rest" in page and "UNSIGNED" in page and "nothing was erased from this model before" in page
    assert verify_certificate(paths["json"])
    for p in paths.values():
        assert b"hunter2" not in p.read_bytes()
    # no per-class data at all
    assert plot_per_class(None, {}, None, tmp_path / "empty.png").is_file()


def test_missing_assurance_figure_is_skipped(tmp_path):
    rec = _record(tmp_path)
    rec["assurance"]["probe"]["figure"] = str(tmp_path / "gone.png")
    rec["assurance"]["relearn"].pop("figure")
    paths = write_certificate(rec, tmp_path / "out")
    assert set(paths) == {"json", "html", "per_class"} and verify_certificate(paths["json"])
    assert "Assurance: probe" in paths["html"].read_text()


def test_format_table():
    before = {"forget_top1": 0.91, "retain_top1": 0.90, "other_top1": 0.955, "other": {"shapes": 0.955},
              "subgroup_rest_top1": 0.88, "other_classes_top1": 0.92}
    after = {"forget_top1": 0.023, "retain_top1": 0.887, "other_top1": 0.951, "other": {"shapes": 0.951},
             "subgroup_rest_top1": 0.87, "other_classes_top1": None}
    text = format_table(before, after)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "before", "after", "change", "(pts)"]
    for needle in ("0.910", "0.023", "-88.7", "0.887", "-1.3", "other: shapes", "0.955", "0.951", "-0.4",
                   "other (mean)", "subgroup rest", "-1.0", "other classes"):
        assert needle in text, needle
    assert lines[-1].split()[-1] == "—"  # missing after value -> no change
    assert "subgroup" not in format_table({"forget_top1": 0.5}, None)


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_verify_rejects_garbage(tmp_path, content):
    p = tmp_path / "certificate.json"
    p.write_text(content)
    assert not verify_certificate(p)


def test_first_screen_tells_a_reader_what_was_promised_checked_and_held(tmp_path):
    page = write_certificate(_record(tmp_path), tmp_path / "out")["html"].read_text(encoding="utf-8")
    text = re.sub(r'src="data:[^"]*"', "", page)
    first = text.split("<h2>Earlier erasures")[0]   # everything above the lineage table
    # what was asked, by whom, why, the verdict
    for fact in ("Forget class seven of dataset digits from model clip-ref version 1", "alice@example.com",
                 "GDPR art. 17", "clip-ref version 3", 'Verdict: <span class="pass">PASSED</span>',
                 "All 4 promises below held.", "reads forgotten data", "UNSIGNED"):
        assert fact in first, fact
    # each promise in words, its limit, the figure measured, whether it held
    for fact in ("names what was forgotten in at most 5.0% of test images", "2.3% (was 91.0%)",
                 "retained classes falls by at most 3.0 pts", "1.3 pts (from 90.0% to 88.7%)",
                 "earlier erasure (digits:three, request req-3) stays forgotten: at most 5.0%",
                 "2.8% (erased in version 2)"):
        assert fact in first, fact
    assert first.count('<span class="pass">held</span>') == 4
    # the failed probe is informational, labelled so, never in the failure colour
    assert "Informational checks (not part of the verdict)" in first
    assert '<span class="info">informational</span> still separable' in first and "47.7%" in first
    assert 'class="fail"' not in text
    # the lineage table, the settings as key/value rows, the methods tried
    assert "Earlier erasures of this model's lineage (re-checked on this version)" in text
    assert "<td>req-3</td><td>digits:three</td><td>2</td>" in text
    for row in ("<th>order</th><td>text_edit, subgroup</td>", "<th>allow_forgotten_data</th><td>yes</td>",
                "<th>inner.steps</th><td>50</td>", "<th>inner.lr</th><td>0.0001</td>"):
        assert row in text, row
    assert "did not pass" in text and "forget_top1 = 0.3123 violates" in text and "31.2%" in text
    # rounded numbers only: no 17-digit floats anywhere
    assert not re.findall(r"\d\.\d{5,}", text), re.findall(r"\d\.\d{5,}", text)


def test_gating_checks_that_fail_are_red_and_old_records_say_none(tmp_path):
    rec = _record(tmp_path, verdict="failed", lineage=None)
    rec["assurance"]["probe"]["gate"] = True
    rec["checks"].append({"name": "probe", "rule": "forgotten images no more separable than allowed",
                          "value": 0.977, "limit": None, "passed": False})
    rec["method"] = {"name": "projection", "config": {"alpha": 1.0}, "seconds": 1.0}   # before kind/attempts
    page = render_html(rec, {})
    assert 'Verdict: <span class="fail">FAILED</span>' in page and "1 of 5 promises did not hold" in page
    assert "linear probe tells forgotten from retained images less well" in page
    assert '<span class="fail">NOT held</span>' in page and "Informational checks" not in page
    assert "None: nothing was erased from this model before this request." in page
    assert "kind</th><td>not recorded" in page and "Methods tried" not in page


def test_signed_certificate_verifies_and_detects_tampering_and_other_keys(tmp_path):
    key_path = signing.generate_key(tmp_path / "keys" / "signing.pem")
    assert (key_path.stat().st_mode & 0o777) == 0o600
    key = signing.load_key(key_path)
    paths = write_certificate(_record(tmp_path), tmp_path / "out", key=key)
    cert = json.loads(paths["json"].read_text())
    sig = cert["signature"]
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == signing.key_id(key)
    pem = signing.public_pem(key)
    assert sig["public_key"] == pem and signing.signature_ok(canonical_record(cert), sig, pem)
    assert verify_certificate(paths["json"])   # the signature is outside the hashed record
    page = paths["html"].read_text()
    assert f"Signed (ed25519, key {sig['key_id']})" in page
    # tampered record: signature fails even when the attacker recomputes record_sha256
    cert["after"]["forget_top1"] = 0.001
    assert not signing.signature_ok(canonical_record(cert), sig, pem)
    # another key: its signature does not verify under ours
    other = signing.load_key(signing.generate_key(tmp_path / "other.pem"))
    forged = signing.sign(canonical_record(cert), other)
    assert signing.signature_ok(canonical_record(cert), forged, signing.public_pem(other))
    assert not signing.signature_ok(canonical_record(cert), forged, pem)
    # the private key never lands in what is written
    secret = key_path.read_bytes()
    body = b"".join(p.read_bytes() for p in paths["json"].parent.iterdir())
    assert secret not in body and secret.split(b"\n")[1] not in body


def test_signing_key_errors_name_the_file_not_its_content(tmp_path, monkeypatch):
    monkeypatch.delenv(signing.ENV, raising=False)
    assert signing.load_key() is None
    monkeypatch.setenv(signing.ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(signing.ConfigError, match="missing.pem: cannot read"):
        signing.load_key()
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWdhcmJhZ2U=\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv(signing.ENV, str(bad))
    with pytest.raises(signing.ConfigError) as err:
        signing.load_key()
    assert "c2VjcmV0" not in str(err.value) and "bad.pem" in str(err.value)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    x = tmp_path / "x25519.pem"
    x.write_bytes(X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM,
                  serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(signing.ConfigError, match="not an Ed25519 key"):
        signing.load_key(x)


def test_depth_promises_show_the_yardstick_and_an_unchanged_image_tower_is_said_plainly(tmp_path):
    rec = _record(tmp_path, changed={"image tower": {"changed": 0, "tensors": 52},
                                     "text tower": {"changed": 2, "tensors": 40}},
                  yardstick={"kind": "the model retrained without it", "values": {"prototypes": 0.338}})
    rec["checks"].append({"name": "depth_prototypes", "rule": "recall <= 0.45", "value": 0.87, "limit": 0.45,
                          "passed": False})
    rec["verdict"] = "failed"
    page = write_certificate(rec, tmp_path / "out")["html"].read_text(encoding="utf-8")
    first = page.split("<h2>Earlier erasures")[0]
    assert "The image tower is unchanged" in first and "image tower: unchanged; text tower: 2 of 40" in first
    assert "With 10 labelled images per class (class means of image features), an attacker recognises" in first
    assert "87.0%" in first and "33.8% (the model retrained without it)" in first and "NOT held" in first
