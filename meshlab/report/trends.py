"""Run-level numbers and their trend across runs of the same name, for ``reports/index.html``.

A run's TPS is all its loads' requests over their summed run time; its p99 merges the loads'
latency histograms (``hdr``, exact) or, when one lacks it, is the largest load p99. A nightly
job runs the same suite tests every night, so runs sharing a ``name`` (pytest node id) form a
history: pass/fail squares and inline SVG sparklines of TPS and p99, oldest to newest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from meshlab.errors import LabError
from meshlab.load import hdr
from meshlab.report.charts import FAULT_EDGE, PALETTE

#: Most runs one trend row shows (the newest).
HISTORY_RUNS = 30


def load_elapsed_s(load: dict[str, Any]) -> Any:
    """A load's actual run time in seconds (a stopped load ends before its planned
    ``duration_s``): from its start/end, else ``requests / tps``, else ``duration_s``."""
    start, end = load.get("start_epoch_s"), load.get("end_epoch_s")
    if isinstance(start, int | float) and isinstance(end, int | float) and end >= start:
        return end - start
    requests, tps = load.get("requests"), load.get("tps")
    if isinstance(requests, int | float) and isinstance(tps, int | float) and tps > 0:
        return requests / tps
    return load.get("duration_s")


def run_numbers(journal: dict[str, Any]) -> tuple[float | None, float | None]:
    """``(tps, p99_us)`` over every load of the run; None without loads/latencies (a dry
    run's loads measured nothing: their ``requests`` are null)."""
    loads = [load for load in journal.get("loads") or [] if load.get("requests") is not None]
    requests = sum(load["requests"] for load in loads)
    elapsed_s = sum(load_elapsed_s(load) or 0.0 for load in loads)
    tps = requests / elapsed_s if loads and elapsed_s > 0 else None
    encoded = [load.get("hdr") for load in loads if load.get("requests")]
    if encoded and all(isinstance(e, str) and e for e in encoded):
        try:
            return tps, hdr.percentiles(hdr.merge(encoded))["p99"]
        except LabError:
            pass
    p99s = [(load.get("latency_us") or {}).get("p99") for load in loads]
    return tps, max((p for p in p99s if isinstance(p, int | float)), default=None)


def sparkline(values: Sequence[float | None], *, title: str, color: str = PALETTE[0],
              width: int = 110, height: int = 26) -> str:
    """A tiny inline ``<svg>`` line of ``values`` (None leaves a gap), the last one dotted.

    Returns:
        The SVG text; ``title`` is escaped, so it may be embedded unescaped.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    out = [(f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} '
           f'{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>')]
    if finite:
        low, high = min(finite), max(finite)
        span = (high - low) or 1.0
        step = (width - 8) / max(len(values) - 1, 1)

        def xy(i: int, v: float) -> tuple[float, float]:
            if high == low:  # a flat history sits in the middle
                return 4 + i * step, height / 2
            return 4 + i * step, height - 4 - (v - low) / span * (height - 8)

        run: list[str] = []
        for i, v in enumerate([*values, None]):
            if v is None or not math.isfinite(v):
                if len(run) > 1:
                    out.append(f'<polyline points="{" ".join(run)}" fill="none" '
                               f'stroke="{color}" stroke-width="1.5"/>')
                run = []
            else:
                run.append("{:.1f},{:.1f}".format(*xy(i, v)))
        last = next(((i, v) for i, v in reversed(list(enumerate(values)))
                     if v is not None and math.isfinite(v)))
        x, y = xy(*last)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>')
    out.append("</svg>")
    return "".join(out)


def trend_rows(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per run name with history, oldest first within the row.

    Args:
        entries: :class:`meshlab.report.index.RunEntry` objects (any order).

    Returns:
        ``[{"name", "runs": [{"status", "run_id", "href", "ok"}], "passed", "total",
        "tps_svg", "p99_svg", "tps", "p99_ms"}]``, names alphabetically; unreadable runs are
        left out (they have no name).
    """
    by_name: dict[str, list[Any]] = {}
    for entry in entries:
        if entry.status != "unreadable":
            by_name.setdefault(entry.name, []).append(entry)
    rows = []
    for name, runs in sorted(by_name.items()):
        runs = sorted(runs, key=lambda r: (r.started_at, r.run_id))[-HISTORY_RUNS:]
        tps = [r.tps for r in runs]
        p99 = [None if r.p99_us is None else r.p99_us / 1000 for r in runs]
        rows.append({
            "name": name, "total": len(runs),
            "passed": sum(1 for r in runs if r.status == "passed"),
            "runs": [{"status": r.status, "run_id": r.run_id, "href": r.href,
                      "ok": r.status == "passed"} for r in runs],
            "tps_svg": sparkline(tps, title=f"TPS of the last {len(runs)} runs"),
            "p99_svg": sparkline(p99, title=f"p99 (ms) of the last {len(runs)} runs",
                                 color=FAULT_EDGE),
            "tps": "–" if tps[-1] is None else f"{tps[-1]:,.1f}",
            "p99_ms": "–" if p99[-1] is None else f"{p99[-1]:,.3f}"})
    return rows
