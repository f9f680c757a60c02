"""The steady-state vs fault-window table: one load's seconds split into periods.

A load's per-second series point ``t_s`` covers ``[start_epoch_s + t_s, + 1 s)`` (clipped to
``end_epoch_s``); requests are bucketed by completion time (``meshlab/load/recorder.py``). Each
second goes to:

- every fault window it overlaps (a second counts in each window it touches);
- **recovery** if it starts at or after the end of the run's last fault window;
- **steady state** otherwise (outside every window, before the last one ended).

Percentiles of a period are exact: the seconds' HdrHistograms (series point ``hdr``,
CONTRACTS.md §2) are merged (:func:`meshlab.load.hdr.merge`). A load written before per-second
histograms existed shows only the max (the max of the seconds' maxima is exact). Response flags
of a period come from ``series/accesslog.jsonl``: a record's second (int epoch of its end)
belongs to the load second holding its middle.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from meshlab.errors import LabError
from meshlab.load import hdr
from meshlab.report.series import AccessTarget, error_label

_LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")


def _fmt_ms(value_us: Any) -> str:
    return "–" if value_us is None else f"{value_us / 1000:.3f}"


def second_periods(load: dict[str, Any], fault_windows: list[dict[str, Any]]
                   ) -> list[tuple[str, str, list[dict[str, Any]], float]]:
    """Split a load's series into ``(label, kind, points, seconds covered)`` periods.

    ``kind`` is ``steady``, ``fault`` or ``recovery``; periods without seconds are left out
    except the steady state of a load that overlaps no window.
    """
    start = load.get("start_epoch_s")
    points = sorted(load.get("series") or [], key=lambda p: p["t_s"])
    if start is None:
        return [("whole load", "steady", points, float(len(points)))]
    end = load.get("end_epoch_s") or start + len(points)
    ends = [w.get("end_epoch_s") for w in fault_windows]
    last_end = None if None in ends else max((float(e) for e in ends if e is not None),
                                             default=None)
    steady: list[dict[str, Any]] = []
    recovery: list[dict[str, Any]] = []
    per_window: list[list[dict[str, Any]]] = [[] for _ in fault_windows]
    lengths: dict[int, float] = {}
    for point in points:
        sec_start = start + point["t_s"]
        sec_end = min(sec_start + 1.0, max(end, sec_start))
        lengths[id(point)] = max(sec_end - sec_start, 0.0) or 1.0
        hit = False
        for index, window in enumerate(fault_windows):
            w_end = window.get("end_epoch_s")
            if sec_start < (w_end if w_end is not None else float("inf")) \
                    and sec_start + 1.0 > window["start_epoch_s"]:
                per_window[index].append(point)
                hit = True
        if not hit:
            (recovery if last_end is not None and sec_start >= last_end else steady).append(point)
    out = []
    if steady or not (any(per_window) or recovery):
        out.append(("steady state", "steady", steady, sum(lengths[id(p)] for p in steady)))
    for window, pts in zip(fault_windows, per_window, strict=True):
        if pts:
            out.append((window["name"], "fault", pts, sum(lengths[id(p)] for p in pts)))
    if recovery:
        out.append(("recovery", "recovery", recovery, sum(lengths[id(p)] for p in recovery)))
    return out


def _latency(points: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Merged percentiles of the points (µs) and whether they are exact."""
    busy = [p for p in points if p.get("requests")]
    encoded: list[str] = [p["hdr"] for p in busy if isinstance(p.get("hdr"), str) and p["hdr"]]
    if busy and len(encoded) == len(busy):
        try:
            return hdr.percentiles(hdr.merge(encoded)), True
        except LabError:
            pass
    maxima = [p["max_us"] for p in busy if p.get("max_us") is not None]
    return {**dict.fromkeys(_LATENCY_KEYS), "max": max(maxima, default=None)}, not busy


def _flags(seconds: set[int], start: float, accesslog: dict[str, AccessTarget]
           ) -> list[dict[str, Any]]:
    """Non-``-`` flags (and flag-less error codes) logged in the given load seconds."""
    found: Counter[tuple[str, str]] = Counter()
    for pod, target in accesslog.items():
        for second, _cluster, flags, code, n in target.counts:
            if math.floor(second + 0.5 - start) not in seconds:
                continue
            if (label := error_label(flags, code)) is not None:
                found[(label, pod)] += n
    return [{"flag": flag, "pod": pod, "count": n}
            for (flag, pod), n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))]


def window_rows(load: dict[str, Any], fault_windows: list[dict[str, Any]],
                accesslog: dict[str, AccessTarget] | None) -> list[dict[str, Any]]:
    """The table rows of one load.

    Args:
        load: a journal load (CONTRACTS.md §2 fields plus ``name``).
        fault_windows: the journal's fault windows.
        accesslog: decoded ``series/accesslog.jsonl`` (None: flags "not collected").

    Returns:
        Rows ``{"period", "kind", "seconds", "requests", "tps", "error_pct", "latency_ms":
        [p50, p90, p99, p99.9, max], "exact", "flags": [{"flag", "pod", "count"}] | None,
        "bad"}`` with display strings.
    """
    rows = []
    start = load.get("start_epoch_s")
    for label, kind, points, covered_s in second_periods(load, fault_windows):
        requests = sum(p.get("requests") or 0 for p in points)
        errors = sum(p.get("errors") or 0 for p in points)
        latency, exact = _latency(points)
        flags = None
        if accesslog is not None and start is not None:
            flags = _flags({p["t_s"] for p in points}, start, accesslog)
        rows.append({
            "period": label, "kind": kind, "seconds": f"{covered_s:.1f}",
            "requests": f"{requests:,}",
            "tps": f"{requests / covered_s:,.1f}" if covered_s else "–",
            "error_pct": f"{errors / requests * 100:.3f} %" if requests else "–",
            "latency_ms": [_fmt_ms(latency[key]) for key in _LATENCY_KEYS], "exact": exact,
            "flags": flags, "bad": bool(errors) or bool(flags)})
    return rows


def window_tables(loads: list[dict[str, Any]], fault_windows: list[dict[str, Any]],
                  accesslog: dict[str, AccessTarget] | None) -> list[dict[str, Any]]:
    """``[{"load", "rows", "exact"}]``, one table per load that has a per-second series."""
    tables = []
    for load in loads:
        if not load.get("series"):
            continue
        rows = window_rows(load, fault_windows, accesslog)
        tables.append({"load": load["name"], "rows": rows,
                       "exact": all(row["exact"] for row in rows)})
    return tables
