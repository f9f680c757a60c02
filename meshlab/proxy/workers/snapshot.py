"""Stats of many workers read as one Envoy's (sans-IO): worker deltas, merged by the main.

Envoy's workers share one counter/gauge per name (atomics in the central store) and keep
thread-local histograms that the main thread merges at each ``stats_flush_interval``
(``E:source/common/stats/thread_local_store.cc``, ``ParentHistogramImpl::merge``). meshlab's
workers are processes with a store each, so:

- **Counters and inc/dec gauges** travel as deltas: a worker sends, for every used stat whose
  value changed since its last report, ``value - last reported``; the main adds them to its
  own store. A read of ``/stats`` asks every worker first, so the merged value is exact at that
  moment. The per-host counters of ``/clusters`` travel the same way.
- **Absolute gauges** (set, not incremented: limits, states, build info) stay with the process
  that owns them: the main sets server, membership and circuit-breaker gauges itself and never
  adds a worker's copy.
- **Histograms**: at each flush every worker closes its interval and sends its bins; the main
  adds them to its open interval and then closes it, so interval and cumulative quantiles are
  over every worker's samples.
- ``/reset_counters`` zeroes the main's counters and each worker's, and what each worker
  counts as already reported.
"""

from __future__ import annotations

from meshlab.proxy.stats.host_stats import HOST_GAUGES, HOST_STAT_NAMES
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import NULL_COUNTER, NULL_GAUGE, Counter, Gauge, Tags

#: ``(raw name, "counter" | "gauge" | "histogram", tags, delta, used)``.
StatDelta = tuple[str, str, Tags | None, int, bool]
#: ``(cluster, (ip, port), deltas in HOST_STAT_NAMES order)``.
HostDelta = tuple[str, tuple[str, int], tuple[int, ...]]
#: ``(raw name, tags, bins {(lower, width): n}, count, sum)`` of one closed interval.
Interval = tuple[str, Tags | None, dict[tuple[float, float], int], int, float]

_COUNTER_FIELDS = tuple(i for i, n in enumerate(HOST_STAT_NAMES) if n not in HOST_GAUGES)


class WorkerReport:
    """The worker side: what changed since the last report.

    Args:
        stats: the worker's stat trees.
    """

    def __init__(self, stats: ProxyStats) -> None:
        self.stats = stats
        self._sent: dict[str, tuple[int, bool]] = {}  # name → (value, used) last reported
        self._hosts_sent: dict[tuple[str, tuple[str, int]], tuple[int, ...]] = {}

    def deltas(self) -> tuple[list[StatDelta], list[HostDelta]]:
        """Counter/gauge and per-host deltas since the last call. A stat is reported the first
        time it is seen, used or not, so it exists in the main's store as in one process
        (``/stats`` lists unused stats too); histograms are reported then only by name."""
        sent = self._sent
        out: list[StatDelta] = []
        for name, stat in self.stats.store.items():
            kind = stat.kind
            if kind == "histogram":
                if name not in sent:
                    out.append((name, kind, stat.tags, 0, False))
                    sent[name] = (0, False)
                continue
            if kind == "gauge" and stat.absolute:  # type: ignore[union-attr]
                continue
            now = (stat.value, stat.used)  # type: ignore[union-attr]
            last = sent.get(name)
            if last != now:
                out.append((name, kind, stat.tags, now[0] - (last[0] if last else 0), now[1]))
                sent[name] = now
        hosts: list[HostDelta] = []
        for cs in self.stats.clusters():
            for addr, hs in cs.hosts:
                now = tuple(v for _, v in hs.items())
                last_h = self._hosts_sent.get((cs.name, addr))
                if last_h != now:
                    base = last_h or (0,) * len(now)
                    hosts.append((cs.name, addr, tuple(a - b for a, b in zip(now, base,
                                                                            strict=True))))
                    self._hosts_sent[(cs.name, addr)] = now
        return out, hosts

    def intervals(self) -> list[Interval]:
        """Close every histogram's interval; the non-empty ones."""
        out: list[Interval] = []
        for hist in self.stats.store.histograms():
            got = hist.take_interval()
            if got is not None:
                out.append((hist.name, hist.tags, *got))
        return out

    def reset_counters(self) -> None:
        """Admin ``/reset_counters`` in this worker: zero the counters and what was reported
        of them (the main zeroes its merged copies)."""
        self.stats.reset_counters()
        for name, stat in self.stats.store.items():
            if isinstance(stat, Counter) and name in self._sent:
                self._sent[name] = (0, self._sent[name][1])
        for key, last in self._hosts_sent.items():
            self._hosts_sent[key] = tuple(0 if i in _COUNTER_FIELDS else v
                                          for i, v in enumerate(last))

    def __repr__(self) -> str:
        return f"WorkerReport(stats={len(self._sent)}, hosts={len(self._hosts_sent)})"


def apply_deltas(stats: ProxyStats, stat_deltas: list[StatDelta],
                 host_deltas: list[HostDelta]) -> None:
    """The main side: add one worker's deltas to the main's stats."""
    store = stats.store
    for name, kind, tags, delta, used in stat_deltas:
        if kind == "histogram":
            store.histogram(name, tags)
            continue
        stat: Counter | Gauge = store.counter(name, tags) if kind == "counter" \
            else store.gauge(name, tags)
        if stat is NULL_COUNTER or stat is NULL_GAUGE:
            continue
        stat.value += delta
        if used:
            stat.used = True
    for cluster, addr, deltas in host_deltas:
        hs = stats.cluster(cluster).hosts.get(addr)
        for field, delta in zip(HOST_STAT_NAMES, deltas, strict=True):
            if delta:
                setattr(hs, field, getattr(hs, field) + delta)


def merge_intervals(stats: ProxyStats, intervals: list[Interval]) -> None:
    """The main side: add one worker's closed histogram intervals to the open ones (the main
    then flushes its store)."""
    store = stats.store
    for name, tags, bins, count, total in intervals:
        store.histogram(name, tags).merge_interval(bins, count, total)
