"""Checks over load results: throughput, latency percentiles, error rate.

Each check names the load it judges (``journal["loads"][i]["name"]``, CONTRACTS.md §2/§3).
Latencies are read in microseconds (``latency_us``) and reported in milliseconds with µs
precision; a percentile the summary does not carry (e.g. p95) is read from the load's
HdrHistogram (``hdr``) when the journal has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from meshlab.checks.base import Check, Verdict, as_number, find_load
from meshlab.errors import ConfigError

#: Percentiles the load summary carries, by the key under ``latency_us``.
SUMMARY_PERCENTILE_KEYS: dict[float, str] = {50.0: "p50", 90.0: "p90", 99.0: "p99",
                                             99.9: "p999", 100.0: "max"}


def fmt_number(value: float, max_decimals: int = 3) -> str:
    """Format ``value`` with up to ``max_decimals`` decimals, keeping at least one.

    ``12.4 -> "12.4"``, ``10 -> "10.0"``, ``12.3456 -> "12.346"``.
    """
    text = f"{value:.{max_decimals}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def percentile_label(percentile: float) -> str:
    """Return the short label of a percentile: ``99 -> "p99"``, ``99.9 -> "p99.9"``."""
    if percentile == 100:
        return "max"
    return f"p{percentile:g}"


@dataclass(frozen=True)
class TpsAtLeast(Check):
    """The load's throughput (``tps``, requests per second) is at least ``at_least``.

    Args:
        at_least: the lowest accepted throughput in requests per second.
        load: the load's name.
    """

    at_least: float
    _: KW_ONLY
    load: str
    name: ClassVar[str] = "tps_at_least"

    def __post_init__(self) -> None:
        if as_number(self.at_least) is None or self.at_least < 0:
            raise ConfigError(f"TpsAtLeast: at_least must be a number >= 0, got {self.at_least!r}")

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        expected = f">= {fmt_number(self.at_least, 1)} TPS"
        result, reason = find_load(journal, self.load)
        if result is None:
            return self._missing(self.load, expected, reason)
        tps = as_number(result.get("tps"))
        if tps is None:
            requests, duration_s = (as_number(result.get("requests")),
                                    as_number(result.get("duration_s")))
            if requests is None or not duration_s:
                return self._missing(self.load, expected, f"no tps for load {self.load!r}")
            tps = requests / duration_s
        observed = f"{fmt_number(tps, 1)} TPS"
        return self._verdict(self.load, expected, observed, tps >= self.at_least,
                             f"throughput of load {self.load!r} is {observed}, "
                             f"expected {expected}")


@dataclass(frozen=True)
class LatencyPercentileAtMost(Check):
    """A latency percentile of the load is at most ``at_most`` milliseconds.

    Args:
        percentile: the percentile in (0, 100]; 50, 90, 99, 99.9 and 100 (max) come from the
            load summary, any other needs the load's ``hdr`` histogram.
        at_most: the highest accepted latency in milliseconds.
        load: the load's name.
    """

    percentile: float = 99.0
    _: KW_ONLY
    at_most: float
    load: str
    name: ClassVar[str] = "latency_percentile_at_most"

    def __post_init__(self) -> None:
        if as_number(self.percentile) is None or not 0 < self.percentile <= 100:
            raise ConfigError("LatencyPercentileAtMost: percentile must be in (0, 100], "
                              f"got {self.percentile!r}")
        if as_number(self.at_most) is None or self.at_most < 0:
            raise ConfigError(
                f"LatencyPercentileAtMost: at_most must be a number >= 0, got {self.at_most!r}")

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        label = percentile_label(self.percentile)
        expected = f"<= {fmt_number(self.at_most)} ms"
        result, reason = find_load(journal, self.load)
        if result is None:
            return self._missing(self.load, expected, reason)
        value_us = self._value_us(result)
        if value_us is None:
            return self._missing(self.load, expected,
                                 f"no {label} latency for load {self.load!r}")
        value_ms = value_us / 1000.0
        observed = f"{fmt_number(value_ms)} ms"
        return self._verdict(self.load, f"{label} {expected}", observed, value_ms <= self.at_most,
                             f"{label} latency of load {self.load!r} is {observed}, "
                             f"expected {expected}")

    def _value_us(self, result: Mapping[str, Any]) -> float | None:
        """The percentile in µs from ``latency_us``, else from the ``hdr`` histogram."""
        summary = result.get("latency_us")
        key = SUMMARY_PERCENTILE_KEYS.get(float(self.percentile))
        if key is not None and isinstance(summary, Mapping):
            value = as_number(summary.get(key))
            if value is not None:
                return value
        encoded = result.get("hdr")
        if not isinstance(encoded, str) or not encoded:
            return None
        try:
            from hdrh.histogram import HdrHistogram

            histogram = HdrHistogram.decode(encoded)
        except Exception:  # noqa: BLE001 - any undecodable histogram reads as "missing"
            return None
        if histogram is None or histogram.get_total_count() == 0:
            return None
        return float(histogram.get_value_at_percentile(self.percentile))


@dataclass(frozen=True)
class ErrorRateAtMost(Check):
    """The load's error ratio (errors / requests) is at most ``at_most``.

    Args:
        at_most: the highest accepted ratio in [0, 1], e.g. ``0.001`` for 0.1 %.
        load: the load's name.
    """

    at_most: float
    _: KW_ONLY
    load: str
    name: ClassVar[str] = "error_rate_at_most"

    def __post_init__(self) -> None:
        if as_number(self.at_most) is None or not 0 <= self.at_most <= 1:
            raise ConfigError(
                f"ErrorRateAtMost: at_most must be in [0, 1], got {self.at_most!r}")

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        expected = f"<= {fmt_number(self.at_most * 100)} %"
        result, reason = find_load(journal, self.load)
        if result is None:
            return self._missing(self.load, expected, reason)
        requests = as_number(result.get("requests"))
        errors = as_number(result.get("errors"))
        ratio = as_number(result.get("error_rate"))
        if ratio is None and requests and errors is not None:
            ratio = errors / requests
        if ratio is None:
            return self._missing(self.load, expected,
                                 f"no error_rate (or errors/requests) for load {self.load!r}")
        observed = f"{fmt_number(ratio * 100)} %"
        counts = (f" ({int(errors)} of {int(requests)} requests)"
                  if errors is not None and requests is not None else "")
        return self._verdict(self.load, expected, observed, ratio <= self.at_most,
                             f"error rate of load {self.load!r} is {observed}{counts}, "
                             f"expected {expected}")
