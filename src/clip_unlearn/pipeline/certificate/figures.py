"""The certificate's per-class figure: grouped bars before/after, forgotten classes in red."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clip_unlearn.pipeline.certificate.files import atomic_write
from clip_unlearn.pipeline.certificate.render import finite


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
        bars = ax.bar([i + off for i in x], [finite(vals.get(c)) or 0.0 for c in classes], width=0.4,
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
    return atomic_write(path, buf.getvalue())
