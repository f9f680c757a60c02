"""HdrHistogram helpers for latencies in **microseconds**.

Every latency histogram meshlab writes tracks integer microseconds from
:data:`LOWEST_US` (1 µs) to :data:`HIGHEST_US` (60 s) with :data:`SIGNIFICANT_DIGITS` (3)
significant decimal digits, i.e. a value is stored within 0.1 % of what was recorded. Histograms
travel as the base64 text of HdrHistogram's V2 compressed encoding (``hdrh`` ``encode()``), so the
results of several runners (or several runs) can be merged exactly with :func:`merge`.

This module must not import locust or gevent: the parent process (suites, checks, report) reads
results with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

from meshlab.errors import LabError

LOWEST_US = 1
"""Smallest distinguishable latency, in microseconds."""
HIGHEST_US = 60_000_000
"""Largest trackable latency, in microseconds (60 s); larger values are clamped to it."""
SIGNIFICANT_DIGITS = 3
"""Value precision: 3 significant decimal digits (relative error <= 0.1 %)."""

PERCENTILE_KEYS: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
"""Names of the percentiles in :func:`percentiles` and the percentile each one stands for."""


def new_histogram() -> HdrHistogram:
    """Create an empty latency histogram (1 µs .. 60 s, 3 significant digits).

    Returns:
        A fresh ``HdrHistogram`` whose values are microseconds.
    """
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def clamp_us(value_us: float) -> int:
    """Round a latency to whole microseconds inside the trackable range.

    Args:
        value_us: latency in microseconds (may be fractional, zero or above 60 s).

    Returns:
        ``round(value_us)`` clamped to ``[LOWEST_US, HIGHEST_US]``.
    """
    return min(max(round(value_us), LOWEST_US), HIGHEST_US)


def record_us(histogram: HdrHistogram, value_us: float) -> None:
    """Record one latency, clamping it into the trackable range (see :func:`clamp_us`).

    Args:
        histogram: histogram created by :func:`new_histogram`.
        value_us: latency in microseconds.
    """
    histogram.record_value(clamp_us(value_us))


def percentiles(histogram: HdrHistogram) -> dict[str, float | None]:
    """Summarise a histogram.

    Args:
        histogram: a microsecond histogram.

    Returns:
        ``{"min", "mean", "p50", "p90", "p99", "p999", "max"}`` in microseconds: integers except
        ``mean`` (a float rounded to 0.1 µs). Percentiles and ``max`` are the highest value
        equivalent to the recorded bucket, ``min`` the lowest, as HdrHistogram reports them.
        Every value is ``None`` when the histogram is empty.
    """
    keys = ["min", "mean", *PERCENTILE_KEYS, "max"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(keys)
    by_percentile = histogram.get_percentile_to_value_dict(list(PERCENTILE_KEYS.values()))
    out: dict[str, float | None] = {
        "min": int(histogram.get_min_value()),
        "mean": round(float(histogram.get_mean_value()), 1),
    }
    for key, pct in PERCENTILE_KEYS.items():
        out[key] = int(by_percentile[pct])
    out["max"] = int(histogram.get_max_value())
    return {key: out[key] for key in keys}


def encode(histogram: HdrHistogram) -> str:
    """Encode a histogram as base64 text (HdrHistogram V2 compressed format).

    Args:
        histogram: a microsecond histogram.

    Returns:
        ASCII text that :func:`decode` turns back into an equal histogram.
    """
    return histogram.encode().decode("ascii")


def decode(encoded: str | bytes) -> HdrHistogram:
    """Decode the text written by :func:`encode`.

    Args:
        encoded: base64 HdrHistogram encoding.

    Returns:
        The histogram (values in microseconds).

    Raises:
        LabError: the text is not a valid HdrHistogram encoding (a corrupt result file).
    """
    raw = encoded.encode("ascii") if isinstance(encoded, str) else encoded
    try:
        return HdrHistogram.decode(raw)
    except Exception as exc:  # hdrh raises TypeError, zlib.error and its own cookie errors
        raise LabError(f"not a valid HdrHistogram encoding: {exc}") from exc


def merge(encoded_list: Iterable[str | bytes]) -> HdrHistogram:
    """Merge encoded histograms into one, exactly (bucket counts are added).

    Empty inputs are skipped: ``hdrh``'s ``add`` would take their ``min`` of 0 as the merged
    minimum.

    Args:
        encoded_list: texts written by :func:`encode`.

    Returns:
        A new microsecond histogram holding every sample of every input (empty if none).

    Raises:
        LabError: one of the texts is not a valid encoding.
    """
    merged = new_histogram()
    for encoded in encoded_list:
        part = decode(encoded)
        if part.get_total_count():
            merged.add(part)
    return merged
