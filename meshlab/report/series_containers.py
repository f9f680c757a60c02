"""The ``containers`` series (CONTRACTS.md §5): per pod and container, CPU cores used and
CFS-throttled periods per second — rates of the cumulative cgroup counters between consecutive
data lines; a counter that went down (a restarted container) counts its new value, as
Prometheus' ``rate()`` does — memory in MiB and the CPU limit in cores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshlab.report.series_lines import Point, TargetSeries, group, number


@dataclass
class ContainerTarget(TargetSeries):
    """One pod's container cgroup series.

    Attributes:
        cpu_cores: container → CPU cores used (rate of ``cpu_usage_us``).
        throttled_per_s: container → CFS periods per second in which it was throttled.
        memory_mib: container → memory in MiB.
        cpu_limit_cores: container → its CPU limit in cores (None: unlimited).
        restarts: container → the kubelet's restart count.
    """

    cpu_cores: dict[str, list[Point]] = field(default_factory=dict)
    throttled_per_s: dict[str, list[Point]] = field(default_factory=dict)
    memory_mib: dict[str, list[Point]] = field(default_factory=dict)
    cpu_limit_cores: dict[str, list[Point]] = field(default_factory=dict)
    restarts: dict[str, list[Point]] = field(default_factory=dict)


def rate(samples: list[tuple[float, float | None]], scale: float) -> list[Point]:
    """Per-second rates × ``scale`` between consecutive samples (None after a gap or first)."""
    out: list[Point] = []
    prev: tuple[float, float] | None = None
    for t, value in samples:
        if value is None:
            out.append((t, None))
            prev = None
            continue
        if prev is not None and t > prev[0]:
            delta = value - prev[1] if value >= prev[1] else value  # reset: Prometheus' rule
            out.append((t, delta / (t - prev[0]) * scale))
        prev = (t, value)
    return out


def _field(per: list[tuple[float, Any]], container: str, key: str
           ) -> list[tuple[float, float | None]]:
    """``(t, value of key)`` of one container over a pod's lines (None: gap or absent)."""
    return [(t, number(cs[container].get(key))
             if isinstance(cs, dict) and isinstance(cs.get(container), dict) else None)
            for t, cs in per]


def containers_series(lines: Iterable[dict[str, Any]]) -> dict[str, ContainerTarget]:
    """Turn ``containers`` lines into per-pod series."""
    out = {}
    for name, (target, rows) in group(lines, ContainerTarget).items():
        per = [(t, None if d is None else d.get("containers")) for t, d in rows]
        for c in sorted({c for _, cs in per if isinstance(cs, dict) for c in cs}):
            target.cpu_cores[c] = rate(_field(per, c, "cpu_usage_us"), 1e-6)
            target.throttled_per_s[c] = rate(_field(per, c, "nr_throttled"), 1.0)
            target.memory_mib[c] = [(t, None if v is None else v / 2 ** 20)
                                    for t, v in _field(per, c, "memory_bytes")]
            target.cpu_limit_cores[c] = [(t, None if v is None else v / 1000)
                                         for t, v in _field(per, c, "cpu_limit_m")]
            target.restarts[c] = _field(per, c, "restarts")
        out[name] = target
    return out
