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

import bisect
import itertools
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
    by_percentile = _values_at_percentiles(histogram, PERCENTILE_KEYS.values())
    out: dict[str, float | None] = {
        "min": int(histogram.get_min_value()),
        "mean": round(_mean(histogram), 1),
    }
    for key, pct in PERCENTILE_KEYS.items():
        out[key] = int(by_percentile[pct])
    out["max"] = int(histogram.get_max_value())
    return {key: out[key] for key in keys}


def quantiles(histogram: HdrHistogram, keys: Iterable[str]) -> dict[str, int | None]:
    """The ``keys`` of :func:`percentiles` that are percentiles or ``max``, without the mean.

    A series point needs only these; :func:`percentiles`' mean walks every bucket in Python.

    Args:
        histogram: a microsecond histogram.
        keys: names from :data:`PERCENTILE_KEYS` and ``"max"``, e.g. ``("p50", "p99", "max")``.

    Returns:
        ``{key: value}`` in microseconds, each equal to ``percentiles(histogram)[key]``; every
        value is ``None`` when the histogram is empty.

    Raises:
        KeyError: a key is neither a :data:`PERCENTILE_KEYS` name nor ``"max"``.
    """
    keys = tuple(keys)
    if histogram.get_total_count() == 0:
        return dict.fromkeys(keys)
    pcts = [PERCENTILE_KEYS[key] for key in keys if key != "max"]
    by_percentile = _values_at_percentiles(histogram, pcts)
    return {key: int(histogram.get_max_value() if key == "max"
                     else by_percentile[PERCENTILE_KEYS[key]]) for key in keys}


def _values_at_percentiles(histogram: HdrHistogram, pcts: Iterable[float]) -> dict[float, int]:
    """``histogram.get_percentile_to_value_dict(pcts)`` (for percentiles > 0), much faster.

    hdrh walks every bucket in Python (~25 ms for a µs histogram, which made summarising an
    hour of per-second histograms take minutes); this takes the running count of the buckets
    in C (``itertools.accumulate``) and bisects it for each percentile's target count: the value
    of the first bucket whose running count reaches the target, as hdrh returns it.
    """
    cumulative = list(itertools.accumulate(histogram.counts[:histogram.counts_len]))
    out = {}
    for pct in pcts:
        index = bisect.bisect_left(cumulative, histogram.get_target_count_at_percentile(pct))
        out[pct] = histogram.get_highest_equivalent_value(histogram.get_value_from_index(index))
    return out


def _mean(histogram: HdrHistogram) -> float:
    """``histogram.get_mean_value()`` (each bucket's count times its middle value), computed
    over the non-empty buckets only instead of hdrh's Python iterator over all of them."""
    total = 0
    for index, count in enumerate(histogram.counts[:histogram.counts_len]):
        if count:
            value = histogram.get_value_from_index(index)
            lowest = histogram.get_lowest_equivalent_value(value)
            size = histogram.get_highest_equivalent_value(value) - lowest + 1
            total += count * (lowest + (size >> 1))
    return float(total) / histogram.get_total_count()


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
