"""Checks over numbers a suite recorded as observations (``tcp_stats`` deltas, gauge peaks).

A suite records ``{stat: value}`` with ``meshlab_run.observe(name, kind, data)``
(:meth:`meshlab.journal.RunJournal.add_observation`), e.g. kind ``tcp_stats_delta`` (counters
``after - before`` a fault, :func:`meshlab.collectors.envoy_stats.delta`) or ``envoy_stats``
(a gauge's peak over the samples polled while the fault was active,
:meth:`meshlab.collectors.envoy_stats.StatsPoller.max_values`); these checks read
``journal["observations"][observation]["data"][stat]``. Stat names are Envoy's, e.g.
``cluster.outbound|8080||fortio-server-l2.mark.svc.cluster.local;.tcp_stats.cx_tx_retransmitted_segments``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from meshlab.checks.base import Check, Verdict, as_number, in_bounds, validate_bounds
from meshlab.checks.load import fmt_number
from meshlab.errors import ConfigError


def find_observed(journal: Mapping[str, Any], observation: str,
                  stat: str) -> tuple[float | None, str]:
    """Find ``observations[observation].data[stat]`` as a number.

    Returns:
        ``(value, "")`` when found, else ``(None, reason)`` naming what exists instead.
    """
    observations = journal.get("observations")
    if not isinstance(observations, Mapping) or observation not in observations:
        names = ", ".join(sorted(map(str, observations or {}))) or "none"
        return None, f"no observation named {observation!r} (observations: {names})"
    entry = observations[observation]
    data = entry.get("data") if isinstance(entry, Mapping) else None
    if not isinstance(data, Mapping):
        return None, f"observation {observation!r} holds no {{stat: value}} data"
    if stat not in data:
        return None, f"no stat {stat!r} in observation {observation!r} ({len(data)} stats)"
    value = as_number(data[stat])
    if value is None:
        return None, f"stat {stat!r} in observation {observation!r} is {data[stat]!r}"
    return value, ""


@dataclass(frozen=True)
class StatBounds(Check):
    """An observed stat lies within ``[at_least, at_most]`` (either bound may be left open).

    Args:
        observation: the observation's name (``journal["observations"]`` key).
        stat: the key inside its ``data``, e.g. a ``tcp_stats`` stat name.
        at_least: the lowest accepted value, or None.
        at_most: the highest accepted value, or None.
        label: a short name for the report instead of the full stat name.

    Raises:
        ConfigError: no bound, a bound that is not a number, ``at_least > at_most``, or an
            empty observation/stat name.
    """

    observation: str
    stat: str
    _: KW_ONLY
    at_least: float | None = None
    at_most: float | None = None
    label: str | None = None
    name: ClassVar[str] = "stat_bounds"

    def __post_init__(self) -> None:
        kind = type(self).__name__
        if not self.observation or not self.stat:
            raise ConfigError(f"{kind}: observation and stat must be named")
        validate_bounds(kind, self.at_least, self.at_most)

    def _expected(self) -> str:
        """``">= 10.0"``, ``"<= 0.0"`` or ``">= 10.0 and <= 30.0"``."""
        return " and ".join(f"{op} {fmt_number(float(bound))}" for op, bound
                            in ((">=", self.at_least), ("<=", self.at_most)) if bound is not None)

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        what = self.label or self.stat
        subject = f"{self.observation} {what}"
        expected = self._expected()
        value, reason = find_observed(journal, self.observation, self.stat)
        if value is None:
            return self._missing(subject, expected, reason)
        observed = fmt_number(value)
        passed = in_bounds(value, self.at_least, self.at_most)
        return self._verdict(subject, expected, observed, passed,
                             f"{what} in observation {self.observation!r} is {observed}, "
                             f"expected {expected}")


class StatAtLeast(StatBounds):
    """``StatBounds(observation, stat, at_least=…)``: e.g. retransmissions during a fault, or a
    gauge's peak while it was active."""

    name: ClassVar[str] = "stat_at_least"

    def __init__(self, observation: str, stat: str, at_least: float, *,
                 label: str | None = None) -> None:
        super().__init__(observation, stat, at_least=at_least, label=label)


class StatAtMost(StatBounds):
    """``StatBounds(observation, stat, at_most=…)``: e.g. no retransmission before a fault."""

    name: ClassVar[str] = "stat_at_most"

    def __init__(self, observation: str, stat: str, at_most: float, *,
                 label: str | None = None) -> None:
        super().__init__(observation, stat, at_most=at_most, label=label)
