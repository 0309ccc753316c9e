"""The certificate's words: the before/after table as text, and the HTML page rendered from the
record with a Jinja2 template (templates/certificate.html.j2, autoescaped).

    print(format_table(record["before"], record["after"]))
    html = render_html(cert, {"per_class": Path("per_class.png"), "relearn": ...})

The page is written for its readers (a DPO, an auditor, the model owner): its first screen says
what was asked, by whom and why, the verdict, and each promise beside the figure measured.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_ENV = Environment(loader=PackageLoader("clip_unlearn.pipeline.certificate", "templates"),
                   autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True,
                   keep_trailing_newline=True)


def finite(v) -> float | None:
    """A finite float, or None (missing, None, NaN, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _fmt(v) -> str:
    x = finite(v)
    return "—" if x is None else f"{x:.3f}"


def _change(b, a) -> str:
    b, a = finite(b), finite(a)
    return "—" if a is None or b is None else f"{(a - b) * 100:+.1f}"


def _rows(before: dict | None, after: dict | None) -> list[tuple[str, object, object]]:
    """(label, before, after) rows: forget, retain, each other dataset, other mean, subgroup rows."""
    b, a = before or {}, after or {}
    rows = [("forget", b.get("forget_top1"), a.get("forget_top1")),
            ("retain", b.get("retain_top1"), a.get("retain_top1"))]
    bo, ao = b.get("other") or {}, a.get("other") or {}
    for name in list(bo) + [n for n in ao if n not in bo]:
        rows.append((f"other: {name}", bo.get(name), ao.get(name)))
    for key, label in (("other_top1", "other (mean)"), ("subgroup_rest_top1", "subgroup rest"),
                       ("other_classes_top1", "other classes")):
        if key in b or key in a:
            rows.append((label, b.get(key), a.get(key)))
    return rows


def format_table(before: dict | None, after: dict | None) -> str:
    """Plain-text before/after top-1 table; change in percentage points."""
    lines = [("metric", "before", "after", "change (pts)")]
    lines += [(label, _fmt(b), _fmt(a), _change(b, a)) for label, b, a in _rows(before, after)]
    w = [max(len(r[i]) for r in lines) for i in range(4)]
    out = [f"{r[0]:<{w[0]}}  " + "  ".join(f"{c:>{w[i + 1]}}" for i, c in enumerate(r[1:])) for r in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def table_rows(before: dict | None, after: dict | None, checks: list[dict]) -> list[dict]:
    """One row per before/after metric, then one per check of the gate (name, value, limit, held):
    the rows of the flow run's table artifact. Same columns in every row; '' where none applies."""
    rows = [{"kind": "metric", "name": label, "before": _fmt(b), "after": _fmt(a), "value": _change(b, a) + " pts",
             "limit": "", "held": ""} for label, b, a in _rows(before, after)]
    rows += [{"kind": "check", "name": c["name"], "before": "", "after": "", "value": _fmt(c.get("value")),
              "limit": f"{c.get('rule', '')}", "held": "yes" if c["passed"] else "NO"} for c in checks]
    return rows




def _pct(v) -> str:
    x = finite(v)
    return "—" if x is None else f"{x * 100:.1f}%"


def _pts(v) -> str:
    x = finite(v)
    return "—" if x is None else f"{x * 100:.1f} pts"


def _setting(v) -> str:
    """A setting as a person reads it: 4 significant digits, lists joined, None as 'none'."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_setting(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_setting(x)}" for k, x in v.items()) or "none"
    return str(v)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", _setting(v)))
    return rows


# check name -> (the promise in plain words, "%" or "pts", the before/after metric it is about)
_PROMISES = {
    "forget_top1": ("Asked by name (zero-shot, the project's prompts), the model names what was forgotten in at "
                    "most {lim} of test images", "%", "forget_top1"),
    "forget_drop": ("Recognition of what was forgotten falls by at least {lim}", "pts", "forget_top1"),
    "retain_top1": ("Accuracy on the retained classes stays at or above {lim}", "%", "retain_top1"),
    "retain_drop": ("Accuracy on the retained classes falls by at most {lim}", "pts", "retain_top1"),
    "subgroup_rest_drop": ("Accuracy on the rest of the class (outside the subgroup) falls by at most {lim}",
                           "pts", "subgroup_rest_top1"),
    "other_classes_drop": ("Accuracy on the other classes falls by at most {lim}", "pts", "other_classes_top1"),
    "other_top1": ("Accuracy on the other datasets stays at or above {lim}", "%", "other_top1"),
    "other_drop": ("Accuracy on the other datasets falls by at most {lim}", "pts", "other_top1"),
    "relearn_forget_top1": ("After a short fine-tune on retained data only, what was forgotten stays at or "
                            "below {lim} (it is not relearned)", "%", None),
    "probe": ("A linear probe tells forgotten from retained images less well than on the base model",
              "%", None),
    "depth_prototypes": ("With {shots} labelled images per class (class means of image features), an attacker "
                         "recognises what was forgotten in at most {lim} of test images", "%", None),
    "depth_probe": ("A linear probe trained on the image features of every class recognises what was forgotten "
                    "in at most {lim} of test images", "%", None),
    "depth_relearn_attack": ("{shots} labelled images of what was forgotten and a short fine-tune bring it back to "
                             "at most {lim} of test images (zero-shot)", "%", None),
    "depth_paraphrase": ("Asked with paraphrased prompts that no method saw, the model names what was forgotten in "
                         "at most {lim} of test images", "%", None),
}


def _promise(c: dict, before: dict, after: dict, lineage: dict, shots=10) -> tuple[str, str, str]:
    """(promise, limit, evidence) of one check, in words and rounded figures."""
    name = str(c.get("name"))
    if name.startswith("lineage:"):
        rid = name[len("lineage:"):]
        e = lineage.get(rid) or {}
        text, unit, metric = (f"An earlier erasure ({e.get('forgotten', '?')}, request {rid}) stays forgotten: "
                              "at most {lim}", "%", None)
    elif name in _PROMISES:
        text, unit, metric = _PROMISES[name]
    else:
        return str(c.get("rule") or name), _setting(c.get("limit")), _setting(c.get("value"))
    fmt = _pct if unit == "%" else _pts
    limit = "" if c.get("limit") is None else fmt(c.get("limit"))
    evidence = fmt(c.get("value"))
    if metric and unit == "%":
        evidence += f" (was {_pct(before.get(metric))})"
    elif metric:
        evidence += f" (from {_pct(before.get(metric))} to {_pct(after.get(metric))})"
    elif name == "relearn_forget_top1":
        evidence += " at most, while relearning"
    elif name.startswith("lineage:"):
        evidence += f" (erased in version {e.get('version', '?')})"
    text = text.replace("{shots}", str(shots))
    return text.replace("{lim}", limit or "the allowed margin"), limit or "—", evidence


def _yardstick(c: dict, cert: dict) -> str:
    """What the retrain oracle reaches on the same figure (depth checks), in words; "—" otherwise."""
    name, ys = str(c.get("name")), cert.get("yardstick") or {}
    value = (ys.get("values") or {}).get(name[len("depth_"):]) if name.startswith("depth_") else None
    if value is None:
        return "—"
    return f"{_pct(value)} ({ys.get('kind', 'retrained without it')})"


def _changed(cert: dict) -> tuple[str, str | None]:
    """(which parts of the model changed, a warning when the image tower did not)."""
    parts = cert.get("changed") or {}
    if not parts:
        return "not recorded", None

    def one(tower: str, p: dict) -> str:
        n = p.get("changed")
        return f"{tower}: unchanged" if n == 0 else f"{tower}: {n} of {p.get('tensors')} tensors changed"

    text = "; ".join(one(t, p) for t, p in parts.items() if t != "other")
    warn = None
    if (parts.get("image tower") or {}).get("changed") == 0:
        warn = ("The image tower is unchanged, bit for bit: the name is gone, but anyone with the weights can still "
                "recognise these images from their image features (the depth promises below say how well).")
    return text, warn


def _informational(cert: dict) -> list[tuple[str, str, str, str]]:
    """Assurance checks that do not count towards the verdict: (check, what it looks at, measured, outcome)."""
    gating = {str(c.get("name")) for c in cert.get("checks") or [] if isinstance(c, dict)}
    rows = []
    for name, entry in (cert.get("assurance") or {}).items():
        if not isinstance(entry, dict) or entry.get("skipped"):
            continue
        if name == "probe" and "probe" not in gating:
            rows.append(("linear probe", "Can a linear classifier on image features still tell forgotten images "
                         "from retained ones? (params assurance.probe_gate is off: reported, not a promise)",
                         f"balanced accuracy {_pct(entry.get('new_balanced_accuracy'))} (base model "
                         f"{_pct(entry.get('base_balanced_accuracy'))}, chance {_pct(entry.get('chance'))})",
                         "less separable than before" if entry.get("passed") else "still separable"))
        elif name == "relearn" and "relearn_forget_top1" not in gating:
            rows.append(("relearning", "Does a short fine-tune on retained data bring what was forgotten back?",
                         f"at most {_pct(entry.get('forget_top1_max'))} (threshold {_pct(entry.get('threshold'))})",
                         "stayed forgotten" if entry.get("passed") else "came back"))
    return rows


def _what(req: dict) -> str:
    classes = [str(c) for c in req.get("classes") or []]
    where = req.get("where") or {}
    text = f"class{'es' if len(classes) > 1 else ''} {', '.join(classes) or '?'} of dataset {req.get('dataset') or '?'}"
    return text + (" where " + ", ".join(f"{k}={v}" for k, v in where.items()) if where else "")


def _when(ts) -> str:
    """2026-11-24T10:00:00+00:00 -> 2026-11-24 10:00 UTC; anything else as it is."""
    try:
        t = dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return str(ts)
    return t.strftime("%Y-%m-%d %H:%M UTC") if t.utcoffset() == dt.timedelta(0) else t.isoformat(" ", "minutes")


def _method_kind(meth: dict) -> str:
    kind = meth.get("kind")
    if kind is None and meth.get("data_free") is not None:
        kind = "data-free" if meth["data_free"] else "reads forgotten data"
    return {"data-free": "data-free: it never read images of what was forgotten",
            "reads forgotten data": "reads forgotten data: it trained on real images of what was forgotten "
                                    "(never the labelled images the depth attacks hold)"
            }.get(kind, kind or "not recorded")


def _signature_line(cert: dict) -> str:
    sig = cert.get("signature")
    rid = (cert.get("request") or {}).get("id")
    if isinstance(sig, dict):
        return (f"Signed ({sig.get('algorithm', '?')}, key {sig.get('key_id', '?')}). "
                f"Check it with: unlearn report {rid} --verify")
    return "UNSIGNED: no signing key was configured when this certificate was made"


def _show(v) -> str:
    return "—" if v is None else str(v)


def _verdict_badge(passed) -> dict:
    if passed is True or passed == "passed":
        return {"cls": "pass", "text": "PASSED"}
    if passed is False or passed == "failed":
        return {"cls": "fail", "text": "FAILED"}
    return {"cls": "unk", "text": str(passed).upper() if passed is not None else "UNKNOWN"}


def _held(passed) -> dict:
    if passed is True:
        return {"cls": "pass", "text": "held"}
    if passed is False:
        return {"cls": "fail", "text": "NOT held"}
    return {"cls": "unk", "text": "not measured"}


def _tried(passed) -> dict:
    """An attempt of `auto` on val: a method that did not pass was set aside, not a failure of this version."""
    return {"cls": "pass", "text": "passed"} if passed else {"cls": "unk", "text": "did not pass"}


def _data_uri(path) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    mime = IMAGE_TYPES.get(Path(path).suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def _pairs(pairs) -> list[tuple[str, str]]:
    return [(_show(k), _show(v)) for k, v in pairs]


def _summary(verdict, checks: list[dict], n_info: int) -> str:
    broken = [c for c in checks if c.get("passed") is False]
    if verdict == "passed":
        summary = "The one promise below held." if len(checks) == 1 else f"All {len(checks)} promises below held."
    elif verdict == "failed":
        summary = (f"{len(broken)} of {len(checks)} promises did not hold (marked NOT held below): "
                   "this version stays a candidate and is never promoted.")
    else:
        summary = "No verdict was recorded."
    if n_info == 1:
        summary += " The informational check below is not a promise and does not count towards the verdict."
    elif n_info:
        summary += f" The {n_info} informational checks below are not promises and do not count."
    return summary


def _attempt(a: dict) -> dict:
    kind = "data-free" if a.get("data_free") else "reads forgotten data"
    if a.get("skipped"):
        return {"method": _show(a.get("method")), "kind": kind, "skipped": _show(a["skipped"])}
    val = a.get("val") or {}
    return {"method": _show(a.get("method")), "kind": kind, "skipped": None,
            "val": [_pct(val.get(k)) for k in ("forget_top1", "retain_top1", "other_top1")],
            "seconds": _setting(a.get("seconds")), "tried": _tried(a.get("passed_val")),
            "why": "; ".join(map(str, a.get("failed") or [])) or "—"}


def _lineage_row(e: dict) -> dict:
    held = e.get("passed")
    if held is None and finite(e.get("value")) is not None and finite(e.get("limit")) is not None:
        held = e["value"] <= e["limit"] + 1e-12
    return {"request_id": _show(e.get("request_id")), "forgotten": _show(e.get("forgotten")),
            "version": _show(e.get("version")), "limit": _pct(e.get("limit")), "value": _pct(e.get("value")),
            "held": _held(held)}


def _assurance_sections(cert: dict, checks: list[dict], figures: dict) -> list[dict]:
    out = []
    for aname, entry in (cert.get("assurance") or {}).items():
        if not isinstance(entry, dict):
            continue
        informational = aname == "probe" and not any(c.get("name") == "probe" for c in checks)
        label = {"cls": "info", "text": "informational"} if informational else \
            ({"cls": "unk", "text": "SKIPPED"} if entry.get("skipped") else _verdict_badge(entry.get("passed")))
        facts = [(k, _fmt(v) if isinstance(v, float) else _setting(v)) for k, v in entry.items()
                 if k not in ("passed", "figure", "summary", "forget_top1_curve")]
        out.append({"name": _show(aname), "label": label, "summary": entry.get("summary"), "facts": _pairs(facts),
                    "figure": _data_uri(figures.get(aname))})
    return out


def page(cert: dict, figures: dict[str, Path]) -> dict:
    """Everything the template shows, as strings (the template only lays it out)."""
    req, model, meth = cert.get("request") or {}, cert.get("model") or {}, cert.get("method") or {}
    before, after = cert.get("before") or {}, cert.get("after") or {}
    verdict = cert.get("verdict")
    checks = [c for c in cert.get("checks") or [] if isinstance(c, dict)]
    lineage = [e for e in cert.get("lineage") or [] if isinstance(e, dict)]
    name = model.get("name") or req.get("model")
    info = _informational(cert)
    base_ref, base_ver = req.get("base"), model.get("base_version")
    asked = f"Forget {_what(req)} from model {req.get('model') or name} version {base_ver or '?'}" + (
        f" (requested as '{base_ref}')" if base_ref and str(base_ref) != str(base_ver) else "")
    method = meth.get("name") or req.get("method")
    if meth.get("chosen") and meth.get("chosen") != method:
        method = f"{method} (chose {meth['chosen']})"
    by_id = {str(e.get("request_id")): e for e in lineage}
    shots = ((cert.get("assurance") or {}).get("depth") or {}).get("shots", 10)
    promises = []
    for c in checks:
        text, limit, evidence = _promise(c, before, after, by_id, shots)
        promises.append({"text": text, "limit": limit, "evidence": evidence, "yardstick": _yardstick(c, cert),
                         "held": _held(c.get("passed"))})
    changed, unchanged_warning = _changed(cert)
    th = cert.get("thresholds") or {}
    sig = cert.get("signature")
    return {
        "id": _show(req.get("id")), "name": _show(name), "version": _show(model.get("version")),
        "base_version": _show(base_ver), "created": _show(_when(cert.get("created_at"))),
        "created_at": _show(cert.get("created_at")),
        "banner": "ok" if verdict == "passed" else "bad" if verdict == "failed" else "",
        "verdict": _verdict_badge(verdict), "summary": _summary(verdict, checks, len(info)),
        "facts": _pairs([("What was asked", asked), ("Requested by", req.get("requester")), ("Why", req.get("reason")),
                         ("Result", f"{name} version {model.get('version')} ({model.get('uri') or 'no registry URI'})"),
                         ("Method", f"{method}, {_method_kind(meth)}"), ("Parts of the model changed", changed),
                         ("Signature", _signature_line(cert))]),
        "unchanged_warning": unchanged_warning,
        "promises": promises, "informational": info, "lineage": [_lineage_row(e) for e in lineage],
        "table": [(label, _pct(b), _pct(a), _change(b, a)) for label, b, a in _rows(before, after)],
        "n_forget": _show(after.get("n_forget", before.get("n_forget"))),
        "n_retain": _show(after.get("n_retain", before.get("n_retain"))),
        "figures": {"per_class": _data_uri(figures.get("per_class"))},
        "method_facts": _pairs([("name", method), ("kind", _method_kind(meth)), ("seconds", _setting(meth.get("seconds")))]),
        "settings": (_pairs(_flat(meth["config"]) or [("(none)", "")]) if isinstance(meth.get("config"), dict) else None),
        "attempts": [_attempt(a) for a in meth.get("attempts") or [] if isinstance(a, dict)],
        "thresholds": _pairs((k, "off" if v is None else _pts(v) if "_drop_" in k else _pct(v)) for k, v in th.items()),
        "overrides": _setting(req["thresholds"]) if req.get("thresholds") else None,
        "assurance": _assurance_sections(cert, checks, figures),
        "weights": _pairs([("base sha256", model.get("base_sha256")), ("new sha256", model.get("new_sha256")),
                           ("uri", model.get("uri"))]),
        "data_versions": _pairs((ds, ", ".join(f"{k}={v}" for k, v in i.items()) if isinstance(i, dict) else i)
                                for ds, i in (cert.get("data_versions") or {}).items()),
        "code_version": _pairs((k, _setting(v)) for k, v in (cert.get("code_version") or {}).items()),
        "signature": ({"facts": _pairs([("algorithm", sig.get("algorithm")), ("key id", sig.get("key_id")),
                                        ("signs", "the canonical JSON record in certificate.json (this page renders it)")]),
                       "public_key": _show(sig.get("public_key"))} if isinstance(sig, dict) else None),
        "record_sha256": cert.get("record_sha256"),
    }


def render_html(cert: dict, figures: dict[str, Path]) -> str:
    """One self-contained page (figures inlined as data: URIs); every record value is HTML-escaped."""
    return _ENV.get_template("certificate.html.j2").render(page=page(cert, figures))
