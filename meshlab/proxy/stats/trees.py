"""Envoy's fixed stat trees: ``cluster.<n>.``, ``http.<prefix>.``, ``listener.<addr>.`` (ENVOY.md §3).

Sans-IO. Each tree resolves its stats once from a :class:`~meshlab.proxy.stats.store.StatsStore`
(rejected names get the store's null stats), so hot paths cost an attribute lookup and an add.
:class:`~meshlab.proxy.stats.metrics.ProxyStats` creates them per cluster / HCM prefix / listener.
"""

from __future__ import annotations

from typing import Any

from meshlab.proxy.stats.host_stats import HostStats, HostStatsRegistry
from meshlab.proxy.stats.store import Counter, StatsStore


class StatTree:
    """A fixed set of stats under one prefix, resolved once (Envoy's ``*_STATS`` macros).

    Subclasses list their names in :attr:`COUNTERS`, :attr:`GAUGES` and :attr:`HISTOGRAMS`;
    each becomes an attribute holding the store's (possibly null) stat, so a hot path costs one
    attribute lookup and one add.
    """

    COUNTERS: tuple[str, ...] = ()
    GAUGES: tuple[str, ...] = ()
    HISTOGRAMS: tuple[str, ...] = ()

    def __init__(self, store: StatsStore, prefix: str) -> None:
        self.prefix = prefix
        self._store = store
        for n in self.COUNTERS:
            setattr(self, n, store.counter(prefix + n))
        for n in self.GAUGES:
            setattr(self, n, store.gauge(prefix + n))
        for n in self.HISTOGRAMS:
            setattr(self, n, store.histogram(prefix + n))

    def __getattr__(self, name: str) -> Any:
        """Only reached for names not in the lists (typing: every listed stat is an attribute)."""
        raise AttributeError(f"{type(self).__name__} has no stat {name!r}")

    def counter(self, stat: str) -> Counter:
        """Any other counter under this prefix, e.g. ``upstream_rq_503``."""
        return self._store.counter(self.prefix + stat)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prefix!r})"


class ClusterStats(StatTree):
    """``cluster.<name>.*`` of one cluster (ENVOY.md §3; ``<name>;`` when delimited).

    Circuit-breaker and outlier-detection sub-trees live with their features; per-host
    counters (``/clusters``) in :attr:`hosts` (:mod:`meshlab.proxy.stats.host_stats`).
    """

    COUNTERS = (
        "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
        "upstream_cx_idle_timeout", "upstream_cx_max_duration_reached",
        "upstream_cx_connect_attempts_exceeded", "upstream_cx_overflow",
        "upstream_cx_pool_overflow", "upstream_cx_none_healthy", "upstream_cx_protocol_error",
        "upstream_cx_max_requests", "upstream_cx_destroy", "upstream_cx_destroy_local",
        "upstream_cx_destroy_remote", "upstream_cx_destroy_with_active_rq",
        "upstream_cx_destroy_local_with_active_rq", "upstream_cx_destroy_remote_with_active_rq",
        "upstream_cx_close_notify", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
        "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_rq_total",
        "upstream_rq_pending_total", "upstream_rq_pending_overflow",
        "upstream_rq_pending_failure_eject", "upstream_rq_cancelled",
        "upstream_rq_maintenance_mode", "upstream_rq_timeout", "upstream_rq_per_try_timeout",
        "upstream_rq_max_duration_reached", "upstream_rq_rx_reset", "upstream_rq_tx_reset",
        "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow",
        "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_backoff_exponential",
        "upstream_rq_retry_backoff_ratelimited", "upstream_rq_completed",
        "retry_or_shadow_abandoned", "membership_change", "update_attempt", "update_success",
        "update_failure", "update_empty", "update_no_rebuild", "update_rejected",
        "bind_errors", "lb_healthy_panic",
    )
    GAUGES = (
        "upstream_cx_active", "upstream_cx_rx_bytes_buffered", "upstream_cx_tx_bytes_buffered",
        "upstream_rq_active", "upstream_rq_pending_active", "membership_healthy",
        "membership_degraded", "membership_excluded", "membership_total", "version",
    )
    HISTOGRAMS = ("upstream_cx_connect_ms", "upstream_cx_length_ms", "upstream_rq_time",
                  "upstream_rq_per_cx")

    def __init__(self, store: StatsStore, cluster_name: str, delimited: bool = True) -> None:
        super().__init__(store, f"cluster.{cluster_name};." if delimited
                         else f"cluster.{cluster_name}.")
        self.name = cluster_name
        self.hosts = HostStatsRegistry()

    def host(self, address: tuple[str, int]) -> HostStats:
        """Per-host counters of ``address`` (created on first use)."""
        return self.hosts.get(address)

    def charge_code(self, code: int, *, retry: bool = False,
                    host: tuple[str, int] | None = None) -> None:
        """Charge one response (from upstream or a router local reply) to the cluster.

        Envoy ``chargeUpstreamCode`` / ``chargeBasicResponseStat``: ``upstream_rq_<code>``,
        ``upstream_rq_<N>xx`` and ``upstream_rq_completed``. A response that triggers a retry
        goes to the ``retry.`` sub-tree instead (503→503→200 gives ``retry.upstream_rq_503`` 2
        and ``upstream_rq_200`` 1; ENVOY.md §3). The host's ``rq_error`` counts 5xx and every
        retried response, ``rq_success`` the other final ones.

        Args:
            code: HTTP status.
            retry: the response is retried (not the final one).
            host: the upstream host the response came from / was charged to, if any.
        """
        prefix = self.prefix + "retry." if retry else self.prefix
        store = self._store
        store.counter(f"{prefix}upstream_rq_{code}").inc()
        store.counter(f"{prefix}upstream_rq_{code // 100}xx").inc()
        if retry:
            store.counter(prefix + "upstream_rq_completed").inc()
        else:
            self.upstream_rq_completed.inc()
        if host is not None:
            hs = self.hosts.get(host)
            if retry or code >= 500:
                hs.rq_error += 1
            else:
                hs.rq_success += 1

    def connection_closed(self, host: tuple[str, int] | None, *, remote: bool,
                          with_active_rq: bool = False, length_ms: float | None = None) -> None:
        """Account one upstream connection close (cluster ``upstream_cx_destroy*``, host gauge).

        Args:
            host: the endpoint, or None when unknown.
            remote: the peer closed it (``_remote``), else Envoy did (``_local``).
            with_active_rq: a request was in flight (``*_with_active_rq``).
            length_ms: connection age for ``upstream_cx_length_ms``.
        """
        self.upstream_cx_active.dec()
        self.upstream_cx_destroy.inc()
        (self.upstream_cx_destroy_remote if remote else self.upstream_cx_destroy_local).inc()
        if with_active_rq:
            self.upstream_cx_destroy_with_active_rq.inc()
            (self.upstream_cx_destroy_remote_with_active_rq if remote
             else self.upstream_cx_destroy_local_with_active_rq).inc()
        if length_ms is not None:
            self.upstream_cx_length_ms.record(length_ms)
        if host is not None:
            self.hosts.get(host).cx_active -= 1

    def set_membership(self, total: int, healthy: int | None = None) -> None:
        """``membership_total`` / ``membership_healthy`` (EDS view of the cluster)."""
        self.membership_total.set(total)
        self.membership_healthy.set(total if healthy is None else healthy)


class HttpStats(StatTree):
    """``http.<stat_prefix>.*`` of one HTTP connection manager plus its router (ENVOY.md §3)."""

    COUNTERS = (
        "downstream_cx_total", "downstream_cx_http1_total", "downstream_cx_http2_total",
        "downstream_cx_destroy", "downstream_cx_destroy_local", "downstream_cx_destroy_remote",
        "downstream_cx_destroy_active_rq", "downstream_cx_destroy_local_active_rq",
        "downstream_cx_destroy_remote_active_rq", "downstream_cx_protocol_error",
        "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
        "downstream_cx_drain_close", "downstream_cx_idle_timeout",
        "downstream_cx_max_duration_reached", "downstream_rq_total", "downstream_rq_http1_total",
        "downstream_rq_http2_total", "downstream_rq_rx_reset", "downstream_rq_tx_reset",
        "downstream_rq_completed", "downstream_rq_1xx", "downstream_rq_2xx", "downstream_rq_3xx",
        "downstream_rq_4xx", "downstream_rq_5xx", "downstream_rq_idle_timeout",
        "downstream_rq_timeout", "downstream_rq_max_duration_reached",
        "downstream_rq_overload_close", "downstream_rq_too_large", "no_route", "no_cluster",
        "rq_total", "rq_redirect", "rq_direct_response",
        "rq_reset_after_downstream_response_started",
    )
    GAUGES = ("downstream_cx_active", "downstream_cx_http1_active", "downstream_rq_active",
              "downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered")
    HISTOGRAMS = ("downstream_cx_length_ms", "downstream_rq_time")

    def __init__(self, store: StatsStore, stat_prefix: str, delimited: bool = True) -> None:
        super().__init__(store, f"http.{stat_prefix};." if delimited else f"http.{stat_prefix}.")
        self._xx = {n: getattr(self, f"downstream_rq_{n}xx") for n in range(1, 6)}

    def charge_code(self, code: int) -> None:
        """``downstream_rq_<N>xx`` (no per-code counters in the HCM)."""
        counter = self._xx.get(code // 100)
        if counter is not None:
            counter.inc()


class ListenerStats(StatTree):
    """``listener.<address>.*`` (address written ``0.0.0.0_15006``; ENVOY.md §3)."""

    COUNTERS = (
        "downstream_cx_total", "downstream_cx_destroy", "downstream_cx_overflow",
        "downstream_cx_overload_reject", "downstream_global_cx_overflow",
        "downstream_pre_cx_timeout", "no_filter_chain_match",
        "downstream_cx_transport_socket_connect_timeout",
        "downstream_listener_filter_remote_close", "downstream_listener_filter_error",
    )
    GAUGES = ("downstream_cx_active", "downstream_pre_cx_active")
    HISTOGRAMS = ("downstream_cx_length_ms",)

    def __init__(self, store: StatsStore, address: str) -> None:
        super().__init__(store, f"listener.{address}.")
