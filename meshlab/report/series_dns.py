"""The ``dns`` series (CONTRACTS.md §5): DNS queries per second each pod sent to kube-dns —
rates of the cumulative per-pod counts between consecutive data lines (a count that went down,
after a lab rebuild, counts its new value, as Prometheus' ``rate()`` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshlab.report.series_containers import rate
from meshlab.report.series_lines import Point, TargetSeries, group, number


@dataclass
class DnsTarget(TargetSeries):
    """The cluster DNS's series.

    Attributes:
        queries_per_s: pod → DNS queries per second it sent to kube-dns.
    """

    queries_per_s: dict[str, list[Point]] = field(default_factory=dict)


def dns_series(lines: Iterable[dict[str, Any]]) -> dict[str, DnsTarget]:
    """Turn ``dns`` lines into per-target series (one target, ``kube-dns``)."""
    out = {}
    for name, (target, rows) in group(lines, DnsTarget).items():
        per = [(t, None if d is None else d.get("queries")) for t, d in rows]
        for pod in sorted({p for _, q in per if isinstance(q, dict) for p in q}):
            samples = [(t, number(q.get(pod)) if isinstance(q, dict) else None)
                       for t, q in per]
            target.queries_per_s[pod] = rate(samples, 1.0)
        out[name] = target
    return out
