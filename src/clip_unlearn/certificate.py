"""Erasure certificate: one self-contained HTML page + a verifiable JSON for one erasure request.

    paths = write_certificate(record, "reports/req-7")   # per_class.png, certificate.json, certificate.html
    verify_certificate(paths["json"])                    # True unless the JSON was edited
    print(format_table(record["before"], record["after"]))

Only what is in `record` goes into the certificate. certificate.json holds the record (assurance figure
paths replaced by the copied file names) plus "figures" and "record_sha256": the sha256 of
json.dumps(stored record, sort_keys=True, separators=(",", ":"), default=str). Figure bytes are not hashed.
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


def _canonical_sha256(record: dict) -> str:
    blob = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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


def _compact(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def _kv(pairs) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs) + "</table>"


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


_CSS = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        ".pass{color:#fff;background:#2a8a2a;padding:2px 10px;font-weight:bold}"
        ".fail{color:#fff;background:#c62828;padding:2px 10px;font-weight:bold}"
        ".unk{color:#fff;background:#777;padding:2px 10px;font-weight:bold}"
        ".verdict{font-size:2em}img{max-width:100%}code{word-break:break-all}")


def render_html(cert: dict, figures: dict[str, Path]) -> str:
    """One self-contained page (figures inlined as data: URIs); every record value is HTML-escaped."""
    req, model, meth = cert.get("request") or {}, cert.get("model") or {}, cert.get("method") or {}
    before, after = cert.get("before") or {}, cert.get("after") or {}
    where = req.get("where") or {}
    what = ", ".join(map(str, req.get("classes") or [])) + (
        " where " + ", ".join(f"{k}={v}" for k, v in where.items()) if where else "")
    s = ['<!DOCTYPE html><html><head><meta charset="utf-8">',
         '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
         'style-src \'unsafe-inline\'">',
         f"<title>Erasure certificate {_e(req.get('id'))}</title><style>{_CSS}</style></head><body>",
         f"<h1>Erasure certificate {_e(req.get('id'))}</h1>",
         f"<p>Model <b>{_e(model.get('name') or req.get('model'))}</b> version <b>{_e(model.get('version'))}</b>"
         f" (from version {_e(model.get('base_version'))})</p>",
         f'<p class="verdict">Verdict: {_badge(cert.get("verdict"))}</p>',
         "<h2>Request</h2>",
         _kv([("request id", req.get("id")), ("requester", req.get("requester")), ("reason", req.get("reason")),
              ("dataset", req.get("dataset")), ("forgotten", what), ("method", req.get("method") or meth.get("name")),
              *([("threshold overrides", _compact(req["thresholds"]))] if req.get("thresholds") else [])]),
         "<h2>Method</h2>",
         _kv([("name", meth.get("name")), ("seconds", meth.get("seconds")),
              ("config", _compact(meth.get("config")) if meth.get("config") is not None else None)]),
         "<h2>Before / after (top-1)</h2><table><tr><th>metric</th><th>before</th><th>after</th>"
         "<th>change (pts)</th></tr>"]
    s += [f"<tr><th>{_e(lab)}</th><td>{_e(_fmt(b))}</td><td>{_e(_fmt(a))}</td><td>{_e(_change(b, a))}</td></tr>"
          for lab, b, a in _rows(before, after)]
    s.append(f"</table><p>forget items: {_e(after.get('n_forget', before.get('n_forget')))}, "
             f"retain items: {_e(after.get('n_retain', before.get('n_retain')))}</p>")
    s.append(_img(figures, "per_class"))
    s.append("<h2>Thresholds</h2>" + _kv((cert.get("thresholds") or {}).items()))
    s.append("<h2>Checks</h2><table><tr><th>check</th><th>rule</th><th>value</th><th>limit</th><th>result</th></tr>")
    s += [f"<tr><td>{_e(c.get('name'))}</td><td>{_e(c.get('rule'))}</td><td>{_e(c.get('value'))}</td>"
          f"<td>{_e(c.get('limit'))}</td><td>{_badge(c.get('passed'))}</td></tr>"
          for c in cert.get("checks") or [] if isinstance(c, dict)]
    s.append("</table>")
    for name, entry in (cert.get("assurance") or {}).items():
        if not isinstance(entry, dict):
            continue
        s.append(f"<h2>Assurance: {_e(name)} {_badge(entry.get('passed'))}</h2>")
        s.append(_kv((k, _compact(v)) for k, v in entry.items() if k not in ("passed", "figure")))
        s.append(_img(figures, name))
    s.append("<h2>Weights</h2>" + _kv([("base sha256", model.get("base_sha256")),
                                       ("new sha256", model.get("new_sha256")), ("uri", model.get("uri"))]))
    s.append("<h2>Data versions</h2>" + _kv(
        (ds, ", ".join(f"{k}={v}" for k, v in info.items()) if isinstance(info, dict) else info)
        for ds, info in (cert.get("data_versions") or {}).items()))
    s.append("<h2>Code version</h2>" + _kv((cert.get("code_version") or {}).items()))
    s.append(f"<p>Created at {_e(cert.get('created_at'))}</p>")
    if cert.get("record_sha256"):
        s.append(f"<p>Record sha256: <code>{_e(cert['record_sha256'])}</code></p>")
    s.append("</body></html>\n")
    return "\n".join(s)


def write_certificate(record: dict, out_dir) -> dict[str, Path]:
    """per_class.png, copied assurance figures, certificate.json and certificate.html, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = json.loads(json.dumps(record, default=str))  # deep copy, as a reader of the JSON will see it
    stored.pop("figures", None)
    stored.pop("record_sha256", None)
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
        key = re.sub(r"[^A-Za-z0-9_-]", "_", str(name))
        key = f"assurance_{key}" if key in _RESERVED or key in paths else key
        dst = out / f"{key}{src.suffix.lower() if src.suffix.lower() in _MIME else '.png'}"
        if src.resolve() != dst.resolve():
            _atomic_write(dst, src.read_bytes())
        entry["figure"] = dst.name
        paths[key], names[key], embed[str(name)] = dst, dst.name, dst
    cert = {**stored, "figures": names, "record_sha256": _canonical_sha256(stored)}
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
    expected = data.pop("record_sha256", None)
    data.pop("figures", None)
    return isinstance(expected, str) and hmac.compare_digest(_canonical_sha256(data), expected)
