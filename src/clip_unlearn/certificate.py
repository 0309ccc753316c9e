"""Erasure certificate: one self-contained HTML page + a verifiable, signed JSON for one erasure request.

    paths = write_certificate(record, "reports/req-7", key=signing.load_key())   # key None: unsigned
    verify_certificate(paths["json"])                    # True unless the JSON was edited
    print(format_table(record["before"], record["after"]))

Only what is in `record` goes into the certificate. certificate.json holds the record (assurance figure
paths replaced by the copied file names) plus "figures", "record_sha256" (the sha256 of canonical_record:
json.dumps(stored record, sort_keys=True, separators=(",", ":"), default=str)) and "signature" (Ed25519
over the same bytes, see signing.py; null when no key was configured). Figure bytes are not hashed.
The HTML page is written for its readers (a DPO, an auditor, the model owner): its first screen says
what was asked, by whom and why, the verdict, and each promise beside the figure measured.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_RESERVED = {"json", "html", "per_class"}


def _atomic_write(path, data: bytes) -> Path:
    """Write via a temp file in the same folder + os.replace: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


_NOT_RECORD = ("figures", "record_sha256", "signature")  # certificate.json keys outside the record


def canonical_record(cert: dict) -> bytes:
    """The bytes that are hashed and signed: the record without figures, hash and signature."""
    record = {k: v for k, v in cert.items() if k not in _NOT_RECORD}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def _canonical_sha256(record: dict) -> str:
    return hashlib.sha256(canonical_record(record)).hexdigest()


def _num(v) -> float | None:
    """A finite float, or None (missing, None, NaN, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _fmt(v) -> str:
    x = _num(v)
    return "—" if x is None else f"{x:.3f}"


def _change(b, a) -> str:
    b, a = _num(b), _num(a)
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


def plot_per_class(before_per_class: dict | None, after_per_class: dict | None,
                   forgotten: list[str] | None, path) -> Path:
    """Grouped bars before/after per class, forgotten classes hatched and labelled red. Same input, same bytes."""
    bpc, apc = before_per_class or {}, after_per_class or {}
    forgotten = set(forgotten or [])
    classes = list(bpc) + [c for c in apc if c not in bpc]
    fig = Figure(figsize=(max(6.0, 0.6 * len(classes) + 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(classes)))
    for off, vals, label, color in ((-0.2, bpc, "before", "#7f7f7f"), (0.2, apc, "after", "#1f77b4")):
        bars = ax.bar([i + off for i in x], [_num(vals.get(c)) or 0.0 for c in classes], width=0.4,
                      label=label, color=color)
        for c, bar in zip(classes, bars):
            if c in forgotten:
                bar.set_hatch("//")
                bar.set_edgecolor("#d62728")
    ax.set_xticks(x)
    ax.set_xticklabels([str(c) for c in classes], rotation=45, ha="right")
    for c, tick in zip(classes, ax.get_xticklabels()):
        if c in forgotten:
            tick.set_color("#d62728")
            tick.set_fontweight("bold")
    if not classes:
        ax.text(0.5, 0.5, "no per-class data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Per-class top-1 before vs after (forgotten in red)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return _atomic_write(path, buf.getvalue())


def _e(v) -> str:
    return html.escape("—" if v is None else str(v), quote=True)


def _pct(v) -> str:
    x = _num(v)
    return "—" if x is None else f"{x * 100:.1f}%"


def _pts(v) -> str:
    x = _num(v)
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


def _kv(pairs, cls: str = "kv") -> str:
    return f'<table class="{cls}">' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs) \
        + "</table>"


def _img(figures: dict, name: str) -> str:
    p = figures.get(name)
    if p is None or not Path(p).is_file():
        return ""
    mime = _MIME.get(Path(p).suffix.lower(), "image/png")
    data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
    return f'<img alt="{_e(name)}" src="data:{mime};base64,{data}">'


def _badge(passed) -> str:
    if passed is True or passed == "passed":
        return '<span class="pass">PASSED</span>'
    if passed is False or passed == "failed":
        return '<span class="fail">FAILED</span>'
    return f'<span class="unk">{_e(str(passed).upper() if passed is not None else "UNKNOWN")}</span>'


def _held(passed) -> str:
    if passed is True:
        return '<span class="pass">held</span>'
    if passed is False:
        return '<span class="fail">NOT held</span>'
    return '<span class="unk">not measured</span>'


def _tried(passed) -> str:
    """An attempt of `auto` on val: a method that did not pass was set aside, not a failure of this version."""
    return '<span class="pass">passed</span>' if passed else '<span class="unk">did not pass</span>'


# check name -> (the promise in plain words, "%" or "pts", the before/after metric it is about)
_PROMISES = {
    "forget_top1": ("The model recognises what was forgotten in at most {lim} of test images", "%", "forget_top1"),
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
}


def _promise(c: dict, before: dict, after: dict, lineage: dict) -> tuple[str, str, str]:
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
    return text.replace("{lim}", limit or "the allowed margin"), limit or "—", evidence


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
    import datetime as dt

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
            "reads forgotten data": "reads forgotten data: it trained on real images of what was forgotten"
            }.get(kind, kind or "not recorded")


def _signature_line(cert: dict) -> str:
    sig = cert.get("signature")
    rid = (cert.get("request") or {}).get("id")
    if isinstance(sig, dict):
        return (f"Signed ({sig.get('algorithm', '?')}, key {sig.get('key_id', '?')}). "
                f"Check it with: unlearn report {rid} --verify")
    return "UNSIGNED: no signing key was configured when this certificate was made"


_CSS = ("body{font:15px/1.4 sans-serif;max-width:1120px;margin:1.2em auto;padding:0 1em;color:#222}"
        "h1{margin:.2em 0 .1em;font-size:1.6em}h2{margin:1.2em 0 .3em;font-size:1.2em}"
        "table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;vertical-align:top}th{background:#f4f4f4}"
        "table.kv th{width:11em}table.wide{width:100%}td.num{text-align:right;white-space:nowrap}"
        ".pass{color:#fff;background:#2a8a2a;padding:1px 8px;font-weight:bold;white-space:nowrap}"
        ".fail{color:#fff;background:#c62828;padding:1px 8px;font-weight:bold;white-space:nowrap}"
        ".unk{color:#fff;background:#777;padding:1px 8px;font-weight:bold;white-space:nowrap}"
        ".info{color:#1f3f66;background:#dde7f3;padding:1px 8px;font-weight:bold;white-space:nowrap}"
        ".banner{border:2px solid #ccc;padding:.5em 1em;margin:.6em 0}.banner .verdict{font-size:1.6em}"
        ".banner.ok{border-color:#2a8a2a;background:#f1f8f1}.banner.bad{border-color:#c62828;background:#fdf1f1}"
        ".sub{color:#555}img{max-width:100%}code,pre{word-break:break-all;white-space:pre-wrap}")


def render_html(cert: dict, figures: dict[str, Path]) -> str:
    """One self-contained page (figures inlined as data: URIs); every record value is HTML-escaped.
    First screen: what was asked, by whom and why, the verdict, then each promise beside its evidence."""
    req, model, meth = cert.get("request") or {}, cert.get("model") or {}, cert.get("method") or {}
    before, after = cert.get("before") or {}, cert.get("after") or {}
    verdict = cert.get("verdict")
    checks = [c for c in cert.get("checks") or [] if isinstance(c, dict)]
    lineage = [e for e in cert.get("lineage") or [] if isinstance(e, dict)]
    name = model.get("name") or req.get("model")
    broken = [c for c in checks if c.get("passed") is False]
    info = _informational(cert)
    if verdict == "passed":
        summary = "The one promise below held." if len(checks) == 1 else f"All {len(checks)} promises below held."
    elif verdict == "failed":
        summary = (f"{len(broken)} of {len(checks)} promises did not hold (marked NOT held below): "
                   "this version stays a candidate and is never promoted.")
    else:
        summary = "No verdict was recorded."
    if len(info) == 1:
        summary += " The informational check below is not a promise and does not count towards the verdict."
    elif info:
        summary += f" The {len(info)} informational checks below are not promises and do not count."
    base_ref = req.get("base")
    base_ver = model.get("base_version")
    asked = f"Forget {_what(req)} from model {req.get('model') or name} version {base_ver or '?'}" + (
        f" (requested as '{base_ref}')" if base_ref and str(base_ref) != str(base_ver) else "")
    method = meth.get("name") or req.get("method")
    if meth.get("chosen") and meth.get("chosen") != method:
        method = f"{method} (chose {meth['chosen']})"
    s = ['<!DOCTYPE html><html><head><meta charset="utf-8">',
         '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
         'style-src \'unsafe-inline\'">',
         f"<title>Erasure certificate {_e(req.get('id'))}</title><style>{_CSS}</style></head><body>",
         f"<h1>Erasure certificate: request {_e(req.get('id'))}</h1>",
         f'<p class="sub">{_e(name)} version {_e(model.get("version"))}, made from version '
         f'{_e(base_ver)} on {_e(_when(cert.get("created_at")))}</p>',
         f'<div class="banner {"ok" if verdict == "passed" else "bad" if verdict == "failed" else ""}">'
         f'<span class="verdict">Verdict: {_badge(verdict)}</span> &nbsp; {_e(summary)}</div>',
         _kv([("What was asked", asked),
              ("Requested by", req.get("requester")), ("Why", req.get("reason")),
              ("Result", f"{name} version {model.get('version')} ({model.get('uri') or 'no registry URI'})"),
              ("Method", f"{method}, {_method_kind(meth)}"),
              ("Signature", _signature_line(cert))]),
         "<h2>What was promised, and what was measured</h2>",
         '<table class="wide"><tr><th>promise</th><th>limit</th><th>measured on the test split</th>'
         "<th>held?</th></tr>"]
    by_id = {str(e.get("request_id")): e for e in lineage}
    for c in checks:
        text, limit, evidence = _promise(c, before, after, by_id)
        s.append(f"<tr><td>{_e(text)}</td><td class=\"num\">{_e(limit)}</td><td>{_e(evidence)}</td>"
                 f"<td>{_held(c.get('passed'))}</td></tr>")
    if not checks:
        s.append('<tr><td colspan="4">no checks were recorded</td></tr>')
    s.append("</table>")
    if info:
        s.append("<h2>Informational checks (not part of the verdict)</h2>"
                 '<table class="wide"><tr><th>check</th><th>question</th><th>measured</th><th>outcome</th></tr>')
        s += [f'<tr><td>{_e(n)}</td><td>{_e(q)}</td><td>{_e(m)}</td>'
              f'<td><span class="info">informational</span> {_e(o)}</td></tr>' for n, q, m, o in info]
        s.append("</table>")

    s.append("<h2>Earlier erasures of this model's lineage (re-checked on this version)</h2>")
    if lineage:
        s.append('<table><tr><th>request</th><th>forgotten</th><th>erased in version</th><th>limit</th>'
                 "<th>measured on this version</th><th>held?</th></tr>")
        for e in lineage:
            held = e.get("passed")
            if held is None and _num(e.get("value")) is not None and _num(e.get("limit")) is not None:
                held = e["value"] <= e["limit"] + 1e-12
            s.append(f"<tr><td>{_e(e.get('request_id'))}</td><td>{_e(e.get('forgotten'))}</td>"
                     f"<td>{_e(e.get('version'))}</td><td class=\"num\">{_e(_pct(e.get('limit')))}</td>"
                     f"<td class=\"num\">{_e(_pct(e.get('value')))}</td><td>{_held(held)}</td></tr>")
        s.append("</table>")
    else:
        s.append("<p>None: nothing was erased from this model before this request.</p>")

    s.append("<h2>Before / after (top-1 accuracy, test split)</h2><table><tr><th>metric</th><th>before</th>"
             "<th>after</th><th>change (pts)</th></tr>")
    s += [f"<tr><th>{_e(lab)}</th><td class=\"num\">{_e(_pct(b))}</td><td class=\"num\">{_e(_pct(a))}</td>"
          f"<td class=\"num\">{_e(_change(b, a))}</td></tr>" for lab, b, a in _rows(before, after)]
    s.append(f"</table><p>forget items: {_e(after.get('n_forget', before.get('n_forget')))}, "
             f"retain items: {_e(after.get('n_retain', before.get('n_retain')))}</p>")
    s.append(_img(figures, "per_class"))

    s.append("<h2>Method</h2>" + _kv([("name", method), ("kind", _method_kind(meth)),
                                      ("seconds", _setting(meth.get("seconds")))]))
    if isinstance(meth.get("config"), dict):
        s.append("<h3>Settings</h3>" + _kv(_flat(meth["config"]) or [("(none)", "")]))
    attempts = [a for a in meth.get("attempts") or [] if isinstance(a, dict)]
    if attempts:
        s.append("<h3>Methods tried (on the validation split; the first that passed was kept)</h3>"
                 "<table><tr><th>method</th><th>kind</th><th>forget</th><th>retain</th><th>other</th>"
                 "<th>seconds</th><th>passed on val?</th><th>why not</th></tr>")
        for a in attempts:
            val = a.get("val") or {}
            kind = "data-free" if a.get("data_free") else "reads forgotten data"
            if a.get("skipped"):
                s.append(f"<tr><td>{_e(a.get('method'))}</td><td>{_e(kind)}</td><td colspan=\"4\">skipped</td>"
                         f"<td>—</td><td>{_e(a['skipped'])}</td></tr>")
                continue
            s.append(f"<tr><td>{_e(a.get('method'))}</td><td>{_e(kind)}</td>"
                     + "".join(f'<td class="num">{_e(_pct(val.get(k)))}</td>'
                               for k in ("forget_top1", "retain_top1", "other_top1"))
                     + f"<td class=\"num\">{_e(_setting(a.get('seconds')))}</td><td>{_tried(a.get('passed_val'))}</td>"
                     f"<td>{_e('; '.join(map(str, a.get('failed') or [])) or '—')}</td></tr>")
        s.append("</table>")

    th = cert.get("thresholds") or {}
    s.append("<h2>Thresholds in force</h2>" + _kv(
        (k, "off" if v is None else _pts(v) if "_drop_" in k else _pct(v)) for k, v in th.items()))
    if req.get("thresholds"):
        s.append("<p>Overridden by the request: " + _e(_setting(req["thresholds"])) + "</p>")

    for aname, entry in (cert.get("assurance") or {}).items():
        if not isinstance(entry, dict):
            continue
        informational = aname == "probe" and not any(c.get("name") == "probe" for c in checks)
        label = '<span class="info">informational</span>' if informational else \
            ('<span class="unk">SKIPPED</span>' if entry.get("skipped") else _badge(entry.get("passed")))
        s.append(f"<h2>Assurance: {_e(aname)} {label}</h2>")
        if entry.get("summary"):
            s.append(f"<p>{_e(entry['summary'])}</p>")
        s.append(_kv((k, _fmt(v) if isinstance(v, float) else _setting(v)) for k, v in entry.items()
                     if k not in ("passed", "figure", "summary", "forget_top1_curve")))
        s.append(_img(figures, aname))

    s.append("<h2>Weights</h2>" + _kv([("base sha256", model.get("base_sha256")),
                                       ("new sha256", model.get("new_sha256")), ("uri", model.get("uri"))]))
    s.append("<h2>Data versions</h2>" + _kv(
        (ds, ", ".join(f"{k}={v}" for k, v in info.items()) if isinstance(info, dict) else info)
        for ds, info in (cert.get("data_versions") or {}).items()))
    s.append("<h2>Code version</h2>" + _kv((k, _setting(v)) for k, v in (cert.get("code_version") or {}).items()))
    sig = cert.get("signature")
    s.append("<h2>Signature</h2>")
    if isinstance(sig, dict):
        s.append(_kv([("algorithm", sig.get("algorithm")), ("key id", sig.get("key_id")),
                      ("signs", "the canonical JSON record in certificate.json (this page renders it)")]))
        s.append(f"<pre>{_e(sig.get('public_key'))}</pre>")
    else:
        s.append("<p>Unsigned: no signing key was configured (CLIP_UNLEARN_SIGNING_KEY) when this certificate was "
                 "made; <code>unlearn report --verify</code> reports it as a failure.</p>")
    s.append(f"<p>Created at {_e(_when(cert.get('created_at')))} ({_e(cert.get('created_at'))})</p>")
    if cert.get("record_sha256"):
        s.append(f"<p>Record sha256: <code>{_e(cert['record_sha256'])}</code></p>")
    s.append("</body></html>\n")
    return "\n".join(s)


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
        dst = out / f"{fig}{src.suffix.lower() if src.suffix.lower() in _MIME else '.png'}"
        if src.resolve() != dst.resolve():
            _atomic_write(dst, src.read_bytes())
        entry["figure"] = dst.name
        paths[fig], names[fig], embed[str(name)] = dst, dst.name, dst
    sig = None
    if key is not None:
        from clip_unlearn.signing import sign

        sig = sign(canonical_record(stored), key)
    cert = {**stored, "figures": names, "record_sha256": _canonical_sha256(stored), "signature": sig}
    paths["json"] = _atomic_write(out / "certificate.json",
                                  json.dumps(cert, indent=2, sort_keys=True, default=str).encode("utf-8"))
    figures = {"per_class": paths["per_class"], **embed}
    paths["html"] = _atomic_write(out / "certificate.html", render_html(cert, figures).encode("utf-8"))
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
