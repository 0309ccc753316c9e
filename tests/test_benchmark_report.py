"""The benchmark's printed summary: shares per block and method, and depth beside the oracle's."""

from clip_unlearn.core.depth import METRICS
from clip_unlearn.pipeline.benchmark_report import add_oracle_gaps, format_summary, summarize


def _row(method: str, forget: str, met: bool, depth: float) -> dict:
    return {"block": "named", "method": method, "forget": forget, "targets_met": met, "seconds": 10.0,
            "data_free": True, **{f"depth_{m}": depth for m in METRICS}}


def test_summary_prints_shares_and_the_depth_gap_to_the_oracle():
    rows = [_row("auto", "digits:seven", True, 0.40), _row("text_edit", "digits:seven", False, 0.90),
            _row("oracle", "digits:seven", False, 0.35), _row("auto", "shapes:star", False, 0.60),
            _row("oracle", "shapes:star", True, 0.45)]
    add_oracle_gaps(rows)
    summary = summarize(rows, [])
    assert set(summary["blocks"]) == {"named"} and summary["blocks"]["named"]["auto"]["share"] == 0.5
    text = format_summary({"summary": summary})
    lines = text.splitlines()
    assert any(ln.split()[:3] == ["named", "auto", "1/2"] for ln in lines), text
    assert any(ln.split()[:3] == ["named", "oracle", "1/2"] for ln in lines), text
    gap = next(ln for ln in lines if ln.startswith("depth vs oracle") and " auto " in ln)
    # seven +0.05 (within 0.10), star +0.15 (not): one of two, mean +0.10 on every metric
    assert "within 0.10 1/2" in gap and gap.count("+0.100") == len(METRICS), gap
    assert "oracle seconds: [10.0, 10.0]" in text
