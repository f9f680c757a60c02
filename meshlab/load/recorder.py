"""Request recording for the load runners: totals, status counts, µs histograms, 1 s series.

The runner calls :meth:`Recorder.record` once per finished request. Requests are bucketed by
**completion time** (when the response, error or timeout was observed), so a series point's
``requests`` is the throughput of that second and a request that hung for 6 s shows up in the
second it finally failed. The recorder is plain Python (no locust, no gevent) so it can be unit
tested in-process and reused by other drivers.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from meshlab.load import hdr

NO_RESPONSE = 0
"""Status recorded for a request that got no (complete) HTTP response: connect error, reset,
timeout."""


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


class Recorder:
    """Accumulates request outcomes into totals, one µs histogram and a per-second series.

    Args:
        duration_s: planned run duration in seconds; requests completing after it are folded
            into the last second, so the series has at most ``ceil(duration_s)`` points.
        start_s: the run's t=0 on the clock the caller passes to :meth:`record` (for example
            ``time.perf_counter()``), in seconds.

    Attributes:
        requests: requests recorded.
        errors: requests whose status :func:`is_error`.
        status_counts: requests per status code (0 = no response).
        histogram: latency of every recorded request, in microseconds.
        series: closed per-second points (see :meth:`summary` for the keys).
        closed: True after :meth:`finish`; later records are ignored.
    """

    def __init__(self, duration_s: float, start_s: float) -> None:
        self.start_s = start_s
        self._last_index = max(0, math.ceil(duration_s) - 1)
        self.requests = 0
        self.errors = 0
        self.status_counts: Counter[int] = Counter()
        self.histogram = hdr.new_histogram()
        self.series: list[dict[str, Any]] = []
        self.closed = False
        self._bucket = 0
        self._bucket_hist = hdr.new_histogram()
        self._bucket_hdr: list[str | None] = []
        self._bucket_errors = 0
        self._bucket_status: Counter[int] = Counter()

    def __repr__(self) -> str:
        return (f"Recorder(requests={self.requests}, errors={self.errors}, "
                f"second={self._bucket}, closed={self.closed})")

    def record(self, status: int, latency_us: float, now_s: float) -> bool:
        """Record one finished request.

        Args:
            status: HTTP status, or 0 when no response arrived.
            latency_us: time from sending to completion (or failure), in microseconds.
            now_s: completion time on the same clock as ``start_s``, in seconds; must not go
                backwards between calls.

        Returns:
            False when the recorder is already closed (the request was not counted).
        """
        if self.closed:
            return False
        index = min(max(int(now_s - self.start_s), 0), self._last_index)
        while self._bucket < index:
            self._close_bucket()
        value_us = hdr.clamp_us(latency_us)
        self.histogram.record_value(value_us)
        self._bucket_hist.record_value(value_us)
        self.requests += 1
        self.status_counts[status] += 1
        self._bucket_status[status] += 1
        if is_error(status):
            self.errors += 1
            self._bucket_errors += 1
        return True

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
        self.series.append({
            "t_s": self._bucket,
            "requests": requests,
            "errors": self._bucket_errors,
            "status_counts": _status_dict(self._bucket_status),
        })
        self._bucket_hdr.append(hdr.encode(self._bucket_hist) if requests else None)
        self._bucket += 1
        if requests:
            self._bucket_hist.reset()
        self._bucket_errors = 0
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
        """
        return {
            "requests": self.requests,
            "errors": self.errors,
            "status_counts": _status_dict(self.status_counts),
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "latency_us": hdr.percentiles(self.histogram),
            "hdr": hdr.encode(self.histogram),
            "series": [self._with_percentiles(point, encoded)
                       for point, encoded in zip(self.series, self._bucket_hdr)],
        }

    @staticmethod
    def _with_percentiles(point: dict[str, Any], encoded: str | None) -> dict[str, Any]:
        summary = hdr.percentiles(hdr.decode(encoded)) if encoded else dict.fromkeys(
            ("p50", "p90", "p99", "max"))
        return {**point, "p50_us": summary["p50"], "p90_us": summary["p90"],
                "p99_us": summary["p99"], "max_us": summary["max"], "hdr": encoded}
