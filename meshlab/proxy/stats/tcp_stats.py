"""Envoy's ``tcp_stats`` transport socket: kernel ``TCP_INFO`` as stats (ENVOY.md §3).

Behaviour follows ``E:source/extensions/transport_sockets/tcp_stats/tcp_stats.cc``:

- Upstream sockets (HTTP pool and TCP proxy, hooked in :func:`meshlab.proxy.upstream.pool.open_upstream`)
  report under ``cluster.<name>;.tcp_stats.``; accepted downstream sockets (hooked in
  ``Sidecar._accept``) under ``listener.0.0.0.0_<port>.tcp_stats.``.
- Counters (``cx_tx_segments``, ``cx_tx_retransmitted_segments``, ``cx_lost``…) are charged with
  the positive delta of the ``tcp_info`` field since the socket's previous reading.
- Gauges ``cx_tx_unsent_bytes`` / ``cx_tx_unacked_segments`` accumulate over sockets (each socket
  adds its change) and each socket subtracts its last value when it closes, so they return to 0.
- Histograms record the current value at every reading: ``cx_rtt_us``, ``cx_rtt_variance_us``,
  ``cx_rcv_rtt``, ``cx_rto``, ``cx_ato`` (µs), window scales, ``cx_reordering``, MSS sizes,
  pacing/delivery rate (bytes/s), ``cx_congestion_window`` (``snd_cwnd * snd_mss`` bytes, only when
  the MSS is known) and ``cx_tx_percent_retransmitted_segments``. Envoy records the latter scaled
  by ``PercentScale`` and displays it as a fraction; meshlab records the fraction (0..1) directly.
- A reading happens when the socket closes (always) and every ``update_period_s`` when set
  (sidecar.json ``tcp_stats_update_period_s``; null = only at close, Envoy's default when
  ``update_period`` is unset). One periodic task serves every tracked socket of the sidecar.
- Names rejected by the stats matcher are null stats; a prefix whose stats are all rejected is not
  tracked at all (no ``getsockopt`` calls), so the default Istio inclusion list costs nothing.

**Stock istio-proxy does not ship this extension** (it is not in Istio's Envoy build); meshlab's
sidecar has it so chaos suites can assert on retransmissions. On a real cluster the same names
exist only with a custom istio-proxy build.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from meshlab.proxy.stats.store import NULL_COUNTER, NULL_GAUGE, NULL_HISTOGRAM, StatsStore
from meshlab.proxy.stats.tcp_info import TcpInfo, read_tcp_info

#: Counter name → ``tcp_info`` field (charged with positive deltas).
COUNTERS: tuple[tuple[str, str], ...] = (
    ("cx_tx_segments", "segs_out"), ("cx_rx_segments", "segs_in"),
    ("cx_tx_data_segments", "data_segs_out"), ("cx_rx_data_segments", "data_segs_in"),
    ("cx_tx_retransmitted_segments", "total_retrans"),
    ("cx_rx_bytes_received", "bytes_received"), ("cx_tx_bytes_sent", "bytes_sent"),
    ("cx_data_segments_delivered", "delivered"), ("cx_lost", "lost"),
)
#: Accumulating gauges → field.
GAUGES: tuple[tuple[str, str], ...] = (
    ("cx_tx_unsent_bytes", "notsent_bytes"), ("cx_tx_unacked_segments", "unacked"),
)
#: Histograms recording the field's current value.
HISTOGRAMS: tuple[tuple[str, str], ...] = (
    ("cx_rtt_us", "rtt"), ("cx_rtt_variance_us", "rttvar"), ("cx_pacing_rate", "pacing_rate"),
    ("cx_delivery_rate", "delivery_rate"), ("cx_rcv_rtt", "rcv_rtt"),
    ("cx_tx_window_scale", "snd_wscale"), ("cx_rx_window_scale", "rcv_wscale"),
    ("cx_reordering", "reordering"), ("cx_rto", "rto"), ("cx_ato", "ato"),
    ("cx_tx_mss_bytes", "snd_mss"), ("cx_rx_mss_bytes", "rcv_mss"),
    ("cx_advmss_bytes", "advmss"),
)
PERCENT_RETRANSMITTED = "cx_tx_percent_retransmitted_segments"
CONGESTION_WINDOW = "cx_congestion_window"


class _Scope:
    """The resolved ``<prefix>tcp_stats.*`` stats of one cluster or listener."""

    def __init__(self, store: StatsStore, prefix: str) -> None:
        base = prefix + "tcp_stats."
        self.counters = [(store.counter(base + n), f) for n, f in COUNTERS]
        self.gauges = [(store.gauge(base + n), f) for n, f in GAUGES]
        self.histograms = [(store.histogram(base + n), f) for n, f in HISTOGRAMS]
        self.percent = store.histogram(base + PERCENT_RETRANSMITTED)
        self.cwnd = store.histogram(base + CONGESTION_WINDOW)
        self.enabled = (any(c is not NULL_COUNTER for c, _ in self.counters)
                        or any(g is not NULL_GAUGE for g, _ in self.gauges)
                        or any(h is not NULL_HISTOGRAM
                               for h in (self.percent, self.cwnd, *(h for h, _ in self.histograms))))


class TrackedSocket:
    """One socket's previous reading (the ``last_*`` members of Envoy's ``TcpStatsSocket``)."""

    __slots__ = ("closed", "last", "prefix", "scope", "sock")

    def __init__(self, sock: Any, prefix: str, scope: _Scope) -> None:
        self.sock = sock
        self.prefix = prefix
        self.scope = scope
        self.last: dict[str, int] = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"TrackedSocket({self.prefix!r}, closed={self.closed}, last={self.last})"


class TcpStatsTracker:
    """All tracked sockets of one sidecar and the periodic reader.

    Args:
        store: where the stats live (its matcher decides which exist).
        update_period_s: seconds between readings of every open socket; None = only at close.
    """

    def __init__(self, store: StatsStore, update_period_s: float | None = None) -> None:
        self.store = store
        self.update_period_s = update_period_s
        self._scopes: dict[str, _Scope] = {}
        self._open: set[TrackedSocket] = set()
        self._task: asyncio.Task[None] | None = None
        _TRACKERS[store] = self

    def track(self, sock: Any, prefix: str) -> TrackedSocket | None:
        """Start tracking ``sock`` under ``prefix`` (e.g. ``cluster.<n>;.``); None if disabled."""
        scope = self._scopes.get(prefix)
        if scope is None:
            scope = self._scopes[prefix] = _Scope(self.store, prefix)
        if not scope.enabled or sock is None:
            return None
        tracked = TrackedSocket(sock, prefix, scope)
        self._open.add(tracked)
        return tracked

    def watch_transport(self, transport: asyncio.BaseTransport, prefix: str
                        ) -> TrackedSocket | None:
        """Track an asyncio transport's socket; the final reading happens in ``connection_lost``.

        asyncio calls the protocol's ``connection_lost`` before it closes the socket, so the last
        ``TCP_INFO`` is still readable there (Envoy: ``TcpStatsSocket::closeSocket``).
        """
        tracked = self.track(transport.get_extra_info("socket"), prefix)
        if tracked is None:
            return None
        protocol = transport.get_protocol()
        original = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self.finish(tracked)
            original(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return tracked

    def record(self, tracked: TrackedSocket) -> TcpInfo | None:
        """Read ``TCP_INFO`` now and charge the stats (None when the socket is gone)."""
        try:
            info = read_tcp_info(tracked.sock)
        except (OSError, ValueError):
            return None
        scope, last = tracked.scope, tracked.last
        segs_diff = info.data_segs_out - last.get("data_segs_out", 0)
        retrans_diff = info.total_retrans - last.get("total_retrans", 0)
        if segs_diff > 0 and retrans_diff >= 0:
            scope.percent.record(retrans_diff / segs_diff)
        for counter, field in scope.counters:
            value = getattr(info, field)
            diff = value - last.get(field, 0)
            if diff > 0:
                counter.inc(diff)
            last[field] = value
        for gauge, field in scope.gauges:
            value = getattr(info, field)
            gauge.inc(value - last.get(field, 0))
            last[field] = value
        for hist, field in scope.histograms:
            hist.record(getattr(info, field))
        if info.snd_mss > 0:
            scope.cwnd.record(info.snd_cwnd * info.snd_mss)
        return info

    def finish(self, tracked: TrackedSocket) -> None:
        """Final reading, then give the gauges back (idempotent)."""
        if tracked.closed:
            return
        self.record(tracked)
        tracked.closed = True
        self._open.discard(tracked)
        for gauge, field in tracked.scope.gauges:
            value = tracked.last.get(field, 0)
            if value > 0:
                gauge.dec(value)
            tracked.last[field] = 0

    def record_all(self) -> None:
        """One periodic pass over every open socket."""
        for tracked in list(self._open):
            self.record(tracked)

    def start(self) -> None:
        """Start the periodic reader when ``update_period_s`` is set (needs a running loop)."""
        if self.update_period_s and self._task is None:
            self._task = asyncio.ensure_future(self._run(self.update_period_s))

    async def _run(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.record_all()

    def stop(self) -> None:
        """Cancel the periodic reader."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def __len__(self) -> int:
        return len(self._open)

    def __repr__(self) -> str:
        return (f"TcpStatsTracker(open={len(self._open)}, prefixes={len(self._scopes)}, "
                f"update_period_s={self.update_period_s})")


_TRACKERS: weakref.WeakKeyDictionary[StatsStore, TcpStatsTracker] = weakref.WeakKeyDictionary()


def watch_upstream(transport: asyncio.BaseTransport, cluster_prefix: str, store: StatsStore
                   ) -> TrackedSocket | None:
    """Hook for :func:`meshlab.proxy.upstream.pool.open_upstream`: track an upstream connection.

    Args:
        transport: the connected transport.
        cluster_prefix: ``cluster.<name>;.`` (``ClusterStats.prefix``).
        store: the sidecar's store; nothing happens unless a tracker was created for it.
    """
    tracker = _TRACKERS.get(store)
    if tracker is None:
        return None
    return tracker.watch_transport(transport, cluster_prefix)
