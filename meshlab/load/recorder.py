"""Request recording for the load runners: totals, status counts, µs histograms, 1 s series.

The runner calls :meth:`Recorder.record` once per finished request. Requests are bucketed by
**completion time** (when the response, error or timeout was observed), so a series point's
``requests`` is the throughput of that second and a request that hung for 6 s shows up in the
second it finally failed. The recorder is plain Python (no locust, no gevent) so it can be unit
tested in-process and reused by other drivers.

One class serves both load modes (CONTRACTS.md §2): a closed-loop runner records one latency
per request; an open-loop runner (``Recorder(..., open_loop=True)``) records the **corrected**
latency (from the request's intended start) as the latency and the **uncorrected** one (from the
actual send) beside it, flags late requests, and reports skipped ones with :meth:`Recorder.skip`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from meshlab.load.hdr import clamp_us, decode, encode, new_histogram, percentiles, quantiles

NO_RESPONSE = 0
"""Status recorded for a request that got no (complete) HTTP response: connect error, reset,
timeout."""
POINT_KEYS = ("p50", "p90", "p99", "max")
"""Latency summaries of a series point (``<key>_us``), :func:`meshlab.load.hdr.quantiles` keys."""


def is_error(status: int) -> bool:
    """Whether a request outcome counts as an error.

    Args:
        status: HTTP status code, or :data:`NO_RESPONSE` (0).

    Returns:
        True unless the status is 2xx or 3xx.
    """
    return not 200 <= status < 400


def _status_dict(counts: Counter[int]) -> dict[str, int]:
    return {str(status): counts[status] for status in sorted(counts)}


class _Latencies:
    """One latency measure: the whole run's µs histogram, the open second's, and the encoding of
    every closed second (``None`` for a second without requests).

    A request is recorded into the open second only; closing the second adds it to the whole
    run's histogram (exact: same buckets), which halves the per-request cost. ``total`` is
    complete once the recorder is finished."""

    def __init__(self) -> None:
        self.total = new_histogram()
        self.bucket = new_histogram()
        self.encoded: list[str | None] = []

    def record(self, latency_us: float) -> None:
        self.bucket.record_value(clamp_us(latency_us))

    def close_bucket(self, requests: int) -> None:
        self.encoded.append(encode(self.bucket) if requests else None)
        if requests:
            self.total.add(self.bucket)
            self.bucket.reset()

    def point(self, index: int, suffix: str) -> dict[str, Any]:
        """Second ``index``'s ``p50…``/``max`` (``<name><suffix>_us``) and ``hdr<suffix>``."""
        encoded = self.encoded[index]
        summary = quantiles(decode(encoded), POINT_KEYS) if encoded else dict.fromkeys(
            POINT_KEYS)
        return {**{f"{key}{suffix}_us": summary[key] for key in POINT_KEYS},
                f"hdr{suffix}": encoded}


class Recorder:
    """Accumulates request outcomes into totals, one µs histogram and a per-second series.

    Args:
        duration_s: planned run duration in seconds; requests completing after it are folded
            into the last second, so the series has at most ``ceil(duration_s)`` points.
        start_s: the run's t=0 on the clock the caller passes to :meth:`record` (for example
            ``time.perf_counter()``), in seconds.
        open_loop: also record the uncorrected latency, late and skipped requests (the
            open-loop keys of CONTRACTS.md §2).

    Attributes:
        requests: requests recorded.
        errors: requests whose status :func:`is_error`.
        status_counts: requests per status code (0 = no response).
        late: open loop: requests recorded as sent late.
        skipped: open loop: scheduled requests never sent (see :meth:`skip`).
        series: closed per-second points (see :meth:`summary` for the keys).
        closed: True after :meth:`finish`; later records are ignored.
    """

    def __init__(self, duration_s: float, start_s: float, open_loop: bool = False) -> None:
        self.start_s = start_s
        self._last_index = max(0, math.ceil(duration_s) - 1)
        self.requests = 0
        self.errors = 0
        self.late = 0
        self.skipped = 0
        self.status_counts: Counter[int] = Counter()
        self.series: list[dict[str, Any]] = []
        self.closed = False
        self._latency = _Latencies()
        self._uncorrected = _Latencies() if open_loop else None
        self._bucket = 0
        self._bucket_errors = 0
        self._bucket_late = 0
        self._bucket_status: Counter[int] = Counter()
        self._skipped_by_second: Counter[int] = Counter()

    def __repr__(self) -> str:
        return (f"Recorder(requests={self.requests}, errors={self.errors}, "
                f"second={self._bucket}, closed={self.closed})")

    def _index(self, at_s: float) -> int:
        return min(max(int(at_s - self.start_s), 0), self._last_index)

    def record(self, status: int, latency_us: float, now_s: float,
               uncorrected_us: float | None = None, late: bool = False) -> bool:
        """Record one finished request.

        Args:
            status: HTTP status, or 0 when no response arrived.
            latency_us: time from sending (open loop: from the intended start) to completion
                (or failure), in microseconds.
            now_s: completion time on the same clock as ``start_s``, in seconds; must not go
                backwards between calls.
            uncorrected_us: open loop: time from the actual send to completion, µs (required
                then, ignored otherwise).
            late: open loop: the request was sent more than the late threshold after its
                intended start.

        Returns:
            False when the recorder is already closed (the request was not counted).
        """
        if self.closed:
            return False
        index = self._index(now_s)
        while self._bucket < index:
            self._close_bucket()
        self._latency.record(latency_us)
        if self._uncorrected is not None:
            self._uncorrected.record(latency_us if uncorrected_us is None else uncorrected_us)
            if late:
                self.late += 1
                self._bucket_late += 1
        self.requests += 1
        self.status_counts[status] += 1
        self._bucket_status[status] += 1
        if is_error(status):
            self.errors += 1
            self._bucket_errors += 1
        return True

    def skip(self, intended_s: float, count: int = 1) -> None:
        """Count scheduled requests that were never sent (open loop), in the second of their
        intended start.

        Args:
            intended_s: intended start on the ``start_s`` clock, in seconds.
            count: how many requests intended then.
        """
        if count > 0:
            self.skipped += count
            self._skipped_by_second[self._index(intended_s)] += count

    def finish(self, now_s: float) -> None:
        """Close the recorder: close the current second and add empty seconds up to ``now_s``.

        Args:
            now_s: end of the run on the ``start_s`` clock, in seconds.
        """
        if self.closed:
            return
        elapsed_s = max(0.0, now_s - self.start_s)
        # a few ms past a whole second (the timer firing late) does not open a new point
        points = min(self._last_index + 1, max(1, math.ceil(round(elapsed_s, 2))))
        self._close_bucket()
        while len(self.series) < points:
            self._close_bucket()
        self.closed = True

    def _close_bucket(self) -> None:
        # Percentiles of a second are computed in summary(), after the run: HdrHistogram's
        # percentile walk takes ~30 ms in Python and would stall the load's event loop once a
        # second, adding that stall to the latency of every request in flight. Encoding is
        # ~0.2 ms.
        requests = sum(self._bucket_status.values())
        point: dict[str, Any] = {
            "t_s": self._bucket,
            "requests": requests,
            "errors": self._bucket_errors,
            "status_counts": _status_dict(self._bucket_status),
        }
        self._latency.close_bucket(requests)
        if self._uncorrected is not None:
            self._uncorrected.close_bucket(requests)
            point["late"] = self._bucket_late
        self.series.append(point)
        self._bucket += 1
        self._bucket_errors = 0
        self._bucket_late = 0
        self._bucket_status = Counter()

    def summary(self) -> dict[str, Any]:
        """The recorded part of a load result (CONTRACTS.md §2).

        Returns:
            ``requests``, ``errors``, ``status_counts`` (status as a string key, ``"0"`` = no
            response), ``error_rate`` (errors / requests, 0.0 without requests), ``latency_us``
            (see :func:`meshlab.load.hdr.percentiles`), ``hdr`` (base64 encoding of the µs
            histogram) and ``series``: one point per second ``{"t_s", "requests", "errors",
            "status_counts", "p50_us", "p90_us", "p99_us", "max_us", "hdr"}``, percentiles and
            ``hdr`` ``None`` for a second without completed requests. A point's ``hdr`` is the
            base64 µs histogram of that second alone, so the report can merge any set of
            seconds (a fault window) into exact percentiles (:func:`meshlab.load.hdr.merge`).
            Open loop adds ``latency_uncorrected_us``, ``hdr_uncorrected``, ``late`` and
            ``skipped``, and per point ``p50_uncorrected_us``, ``p90_uncorrected_us``,
            ``p99_uncorrected_us``, ``max_uncorrected_us``, ``hdr_uncorrected``, ``late`` and
            ``skipped`` (latencies and ``hdr`` are then the corrected ones).
        """
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "status_counts": _status_dict(self.status_counts),
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "latency_us": percentiles(self._latency.total),
            "hdr": encode(self._latency.total),
            "series": [{**point, **self._latency.point(index, "")}
                       for index, point in enumerate(self.series)],
        }
        if self._uncorrected is not None:
            out["latency_uncorrected_us"] = percentiles(self._uncorrected.total)
            out["hdr_uncorrected"] = encode(self._uncorrected.total)
            out["late"], out["skipped"] = self.late, self.skipped
            for index, point in enumerate(out["series"]):
                point.update(self._uncorrected.point(index, "_uncorrected"))
                point["late"] = point.pop("late")  # keep §2's key order: late, skipped last
                point["skipped"] = self._skipped_by_second[index]
        return out

    def result(self, head: dict[str, Any], start_epoch_s: float, elapsed_s: float
               ) -> dict[str, Any]:
        """The runner's whole result file (CONTRACTS.md §2) from what was recorded.

        Args:
            head: the keys describing the load, first in the file (``tool``, ``mode``,
                ``target_url``, ``users``, ``rate_per_s``, ``duration_s``, …).
            start_epoch_s: wall-clock time of ``start_s``, Unix seconds.
            elapsed_s: actual run time in seconds (up to :meth:`finish`).

        Returns:
            ``head``, ``start_epoch_s``/``end_epoch_s``, ``tps`` (requests / ``elapsed_s``) and
            every key of :meth:`summary`.
        """
        summary = self.summary()
        return {**head, "start_epoch_s": round(start_epoch_s, 6),
                "end_epoch_s": round(start_epoch_s + elapsed_s, 6),
                "requests": summary.pop("requests"), "errors": summary.pop("errors"),
                "status_counts": summary.pop("status_counts"),
                "tps": round(self.requests / elapsed_s, 3) if elapsed_s > 0 else 0.0,
                **summary}
