"""Merge the results of N load processes of one load into one result, exactly.

A load run by N processes (:mod:`meshlab.load.group` in one pod, or one Kubernetes Job per
worker, :mod:`meshlab.load.kube_jobs`) gives N result dicts (CONTRACTS.md §2).
:func:`merge_results` turns them into the result one process recording every request would
have written:

- counts (``requests``, ``errors``, ``status_counts``, open-loop ``late``/``skipped``) summed;
  what was split summed back: ``rate_per_s``, and ``users`` (closed loop) or ``connections``
  (open loop); ``processes`` summed (N single-process results give ``processes: N``);
- ``start_epoch_s`` the earliest start, ``end_epoch_s`` the latest end; ``tps`` and
  ``error_rate`` recomputed over that union span;
- ``hdr`` (and ``hdr_uncorrected``) added bucket by bucket (HdrHistogram ``add``, via
  :func:`meshlab.load.hdr.merge`), ``latency_us`` (``latency_uncorrected_us``) recomputed from the
  merged histogram: percentiles are never averaged;
- per-second ``series`` points merged on a common clock, see :func:`series_offset_s`.

**How a request's second is assigned.** Each process buckets a request into the point ``t_s =
floor(completion - own start_epoch_s)`` (:class:`meshlab.load.recorder.Recorder`). The merged
series' clock starts at the earliest ``start_epoch_s`` (``t0``); process ``k`` started
``d_k = start_k - t0`` seconds later (milliseconds, when the processes are started together) and
its whole point ``t_s`` goes to the merged point ``t_s + round(d_k)`` (half up). Per-request
times are not in a result, so a request completing in the last ``d_k - round(d_k)`` seconds of
its process's second lands one merged second early or late: with ``d_k`` of a few ms, those are
the requests of the last few ms of a second. The merged point's ``hdr`` is the sum of the
points' ``hdr``, so its percentiles are exact for the requests it holds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from meshlab.errors import LabError
from meshlab.load.hdr import decode, encode, merge, percentiles, quantiles
from meshlab.load.spec import POOL_FIELD

#: Keys every merged result must agree on (one load).
SAME_KEYS = ("tool", "mode", "target_url", "distribution", "late_threshold_us")
#: Integer counts summed, at the top level and in series points (when present).
COUNT_KEYS = ("requests", "errors", "late", "skipped")
#: Series percentile keys by histogram key: (hdr key, {point key: quantiles() key}).
POINT_HISTOGRAMS = (
    ("hdr", {"p50_us": "p50", "p90_us": "p90", "p99_us": "p99", "max_us": "max"}),
    ("hdr_uncorrected", {"p50_uncorrected_us": "p50", "p90_uncorrected_us": "p90",
                         "p99_uncorrected_us": "p99", "max_uncorrected_us": "max"}),
)
#: Top-level histogram key → its summary key.
RESULT_HISTOGRAMS = (("hdr", "latency_us"), ("hdr_uncorrected", "latency_uncorrected_us"))


def _status_sum(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for one in counts:
        total.update({str(k): int(v) for k, v in one.items()})
    return {k: total[k] for k in sorted(total, key=int)}


def _same(results: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = {repr(r.get(key)) for r in results}
    if len(values) > 1:
        raise LabError(f"cannot merge load results of different loads: {key} differs "
                       f"({', '.join(sorted(values))})")
    return results[0].get(key)


def _merge_histogram(parts: Sequence[Mapping[str, Any]], key: str, what: str) -> str | None:
    """The encoded sum of ``parts[i][key]``; None when no part has it.

    Raises:
        LabError: some parts have the histogram and others (with requests) do not.
    """
    have = [p for p in parts if p.get(key) is not None]
    if not have:
        return None
    missing = [p for p in parts if p.get(key) is None and p.get("requests")]
    if missing:
        raise LabError(f"cannot merge {what}: {key} is missing in {len(missing)} of "
                       f"{len(parts)} parts that have requests")
    return encode(merge(p[key] for p in have))


def series_offset_s(start_epoch_s: float, t0_epoch_s: float) -> int:
    """Whole seconds a process's series is shifted by on the merged clock (see the module
    docstring): ``round(start_epoch_s - t0_epoch_s)``, half up.

    Args:
        start_epoch_s: the process's start, Unix seconds.
        t0_epoch_s: the earliest start of the merged processes, Unix seconds.
    """
    return math.floor(start_epoch_s - t0_epoch_s + 0.5)


def _empty_point(template: Mapping[str, Any], t_s: int) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for key in template:
        if key == "t_s":
            point[key] = t_s
        elif key in COUNT_KEYS:
            point[key] = 0
        elif key == "status_counts":
            point[key] = {}
        else:
            point[key] = None
    return point


def merge_points(points: Sequence[Mapping[str, Any]], t_s: int) -> dict[str, Any]:
    """Merge the points several processes recorded for one merged second.

    Args:
        points: series points (CONTRACTS.md §2), at least one.
        t_s: the merged second.

    Returns:
        One point with the keys of ``points[0]``: counts summed, ``hdr``/``hdr_uncorrected``
        added, the percentile keys recomputed from them (None without requests).

    Raises:
        LabError: a point with requests lacks a histogram the others have.
    """
    merged = _empty_point(points[0], t_s)
    for key in COUNT_KEYS:
        if key in merged:
            merged[key] = sum(int(p.get(key) or 0) for p in points)
    merged["status_counts"] = _status_sum([p.get("status_counts") or {} for p in points])
    for hdr_key, percentile_keys in POINT_HISTOGRAMS:
        if hdr_key not in merged:
            continue
        encoded = _merge_histogram(points, hdr_key, f"second {t_s}")
        merged[hdr_key] = encoded if merged.get("requests") else None
        summary = (quantiles(decode(encoded), percentile_keys.values())
                   if merged[hdr_key] else {})
        for point_key, summary_key in percentile_keys.items():
            if point_key in merged:
                merged[point_key] = summary.get(summary_key)
    return merged


def merge_series(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-second points of ``results`` on the clock of the earliest start (see the module
    docstring), contiguous from ``t_s`` 0 (a second no process has a point for is empty)."""
    t0 = min(float(r["start_epoch_s"]) for r in results)
    by_second: dict[int, list[Mapping[str, Any]]] = {}
    for result in results:
        shift = series_offset_s(float(result["start_epoch_s"]), t0)
        for point in result.get("series") or []:
            by_second.setdefault(int(point["t_s"]) + shift, []).append(point)
    if not by_second:
        return []
    template = next(iter(by_second.values()))[0]
    return [merge_points(by_second[t_s], t_s) if t_s in by_second else _empty_point(template, t_s)
            for t_s in range(max(by_second) + 1)]


def merge_results(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge the results of the processes of one load (see the module docstring).

    Args:
        results: CONTRACTS.md §2 result dicts (runner files, or earlier merges), at least one.

    Returns:
        A new result dict with the keys of ``results[0]`` (plus ``processes``).

    Raises:
        LabError: no results, results of different loads (tool, mode, URL, distribution or
            late threshold differ), or histograms present in some parts only.
    """
    if not results:
        raise LabError("cannot merge load results: none given")
    merged: dict[str, Any] = dict(results[0])
    for key in SAME_KEYS:
        if any(key in r for r in results):
            merged[key] = _same(results, key)
    pool = POOL_FIELD.get(str(merged.get("mode")))  # split; an open-loop result's users as given
    if pool in merged:
        merged[pool] = sum(int(r.get(pool) or 0) for r in results)
    rates = [r.get("rate_per_s") for r in results]
    merged["rate_per_s"] = None if any(v is None for v in rates) else float(sum(rates))
    merged["duration_s"] = max(float(r["duration_s"]) for r in results)
    start = min(float(r["start_epoch_s"]) for r in results)
    end = max(float(r["end_epoch_s"]) for r in results)
    merged["start_epoch_s"], merged["end_epoch_s"] = start, end
    for key in COUNT_KEYS:
        if key in merged:
            merged[key] = sum(int(r.get(key) or 0) for r in results)
    merged["status_counts"] = _status_sum([r.get("status_counts") or {} for r in results])
    requests = merged["requests"]
    merged["tps"] = round(requests / (end - start), 3) if end > start else 0.0
    merged["error_rate"] = merged["errors"] / requests if requests else 0.0
    for hdr_key, summary_key in RESULT_HISTOGRAMS:
        encoded = _merge_histogram(results, hdr_key, "load results")
        if encoded is None:
            continue
        merged[hdr_key] = encoded
        merged[summary_key] = percentiles(decode(encoded))
    merged["series"] = merge_series(results)
    merged["processes"] = sum(int(r.get("processes") or 1) for r in results)
    return merged
