"""Erasure certificate: files, escaping, determinism, integrity hash, optional parts."""

from __future__ import annotations

import base64
import copy
import json

import pytest
import torch

from clip_unlearn.certificate import (format_table, plot_per_class, render_html, verify_certificate,
                                      write_certificate)

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
        "method": {"name": "subgroup", "config": {"steps": 50, "lr": 1e-4}, "seconds": 41.2},
        "before": {"forget_top1": 0.91, "retain_top1": 0.90, "other_top1": 0.955, "other": {"shapes": 0.955},
                   "per_class": {c: 0.9 for c in CLASSES}, "n_forget": 216, "n_retain": 1938},
        "after": {"forget_top1": 0.023, "retain_top1": 0.887, "other_top1": 0.951, "other": {"shapes": 0.951},
                  "per_class": {**{c: 0.89 for c in CLASSES}, "seven": 0.023, "nine": None},
                  "n_forget": 216, "n_retain": 1938},
        "thresholds": {"forget_max": 0.05, "retain_drop_max": 0.03, "other_drop_max": None},
        "checks": [{"name": "forget_top1", "rule": "after <= 0.05", "value": 0.023, "limit": 0.05, "passed": True},
                   {"name": "retain_drop", "rule": "before - after <= 0.03", "value": 0.013, "limit": 0.03,
                    "passed": True}],
        "verdict": "passed",
        "assurance": {
            "relearn": {"passed": True, "verdict_reason": "stays forgotten",
                        "forget_top1_curve": [[0, 0.02], [25, 0.03], [50, 0.05]], "threshold": 0.2,
                        "figure": str(_png(tmp_path / "src_relearn.png", 1))},
            "probe": {"passed": False, "base_accuracy": 0.99, "new_accuracy": 0.80,
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
    assert 'class="fail">FAILED' in page  # probe's own verdict
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
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


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
    assert 'class="fail">FAILED' in page and "three where style=thin" in page and "subgroup rest" in page
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
