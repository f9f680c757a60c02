"""Envoy stat trees and Istio standard metrics on top of :mod:`meshlab.proxy.stats` (sans-IO).

Names follow ENVOY.md §3 (cluster, ``http.<prefix>``, listener, server) and §4 (Istio metrics,
25 labels in ``tags_`` push order). Stats objects are resolved once per cluster / prefix and
cached so the per-request cost is a few attribute increments.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.proxy.config import PodInfo
from meshlab.proxy.stats import Counter, Gauge, Histogram, StatsStore, Tags, tagged_name

ISTIO_REQUESTS_TOTAL = "istiocustom.istio_requests_total"
ISTIO_REQUEST_DURATION = "istiocustom.istio_request_duration_milliseconds"
ISTIO_REQUEST_BYTES = "istiocustom.istio_request_bytes"
ISTIO_RESPONSE_BYTES = "istiocustom.istio_response_bytes"
ISTIO_TCP_OPENED = "istiocustom.istio_tcp_connections_opened_total"
ISTIO_TCP_CLOSED = "istiocustom.istio_tcp_connections_closed_total"
ISTIO_TCP_SENT = "istiocustom.istio_tcp_sent_bytes_total"
ISTIO_TCP_RECEIVED = "istiocustom.istio_tcp_received_bytes_total"

_CLUSTER_COUNTERS = (
    "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
    "upstream_cx_destroy", "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
    "upstream_cx_destroy_with_active_rq", "upstream_cx_http1_total", "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total", "upstream_cx_none_healthy", "upstream_rq_total",
    "upstream_rq_completed", "upstream_rq_retry", "upstream_rq_retry_success",
    "upstream_rq_retry_limit_exceeded", "upstream_rq_timeout", "upstream_rq_cancelled",
    "upstream_rq_pending_total", "upstream_rq_rx_reset", "upstream_rq_tx_reset",
    "upstream_rq_pending_failure_eject",
)


class ClusterStats:
    """``cluster.<name>.*`` for one cluster (names use ``<name>;`` when delimited)."""

    def __init__(self, store: StatsStore, cluster_name: str, delimited: bool = True) -> None:
        self.name = cluster_name
        self.prefix = f"cluster.{cluster_name};." if delimited else f"cluster.{cluster_name}."
        self._store = store
        for n in _CLUSTER_COUNTERS:
            setattr(self, n, store.counter(self.prefix + n))
        self.upstream_cx_active: Gauge = store.gauge(self.prefix + "upstream_cx_active")
        self.upstream_rq_active: Gauge = store.gauge(self.prefix + "upstream_rq_active")
        self.upstream_rq_time: Histogram = store.histogram(self.prefix + "upstream_rq_time")
        self.upstream_cx_connect_ms: Histogram = store.histogram(
            self.prefix + "upstream_cx_connect_ms")
        self.upstream_cx_length_ms: Histogram = store.histogram(
            self.prefix + "upstream_cx_length_ms")

    def counter(self, stat: str) -> Counter:
        """Any other counter under this cluster, e.g. ``upstream_rq_503``."""
        return self._store.counter(self.prefix + stat)

    def charge_code(self, code: int) -> None:
        """``upstream_rq_<code>``, ``upstream_rq_<N>xx`` and ``upstream_rq_completed``."""
        self._store.counter(f"{self.prefix}upstream_rq_{code}").inc()
        self._store.counter(f"{self.prefix}upstream_rq_{code // 100}xx").inc()
        self.upstream_rq_completed.inc()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"ClusterStats({self.name!r})"


class HttpStats:
    """``http.<stat_prefix>.*`` of one HTTP connection manager."""

    def __init__(self, store: StatsStore, stat_prefix: str, delimited: bool = True) -> None:
        self.prefix = f"http.{stat_prefix};." if delimited else f"http.{stat_prefix}."
        self._store = store
        c, g = store.counter, store.gauge
        self.downstream_cx_total = c(self.prefix + "downstream_cx_total")
        self.downstream_cx_http1_total = c(self.prefix + "downstream_cx_http1_total")
        self.downstream_cx_destroy = c(self.prefix + "downstream_cx_destroy")
        self.downstream_cx_protocol_error = c(self.prefix + "downstream_cx_protocol_error")
        self.downstream_cx_active = g(self.prefix + "downstream_cx_active")
        self.downstream_rq_total = c(self.prefix + "downstream_rq_total")
        self.downstream_rq_http1_total = c(self.prefix + "downstream_rq_http1_total")
        self.downstream_rq_completed = c(self.prefix + "downstream_rq_completed")
        self.downstream_rq_rx_reset = c(self.prefix + "downstream_rq_rx_reset")
        self.downstream_rq_tx_reset = c(self.prefix + "downstream_rq_tx_reset")
        self.downstream_rq_active = g(self.prefix + "downstream_rq_active")
        self.downstream_rq_time = store.histogram(self.prefix + "downstream_rq_time")
        self.no_route = c(self.prefix + "no_route")
        self.rq_total = c(self.prefix + "rq_total")
        self._xx = {n: c(f"{self.prefix}downstream_rq_{n}xx") for n in range(1, 6)}

    def charge_code(self, code: int) -> None:
        """``downstream_rq_<N>xx`` (no per-code counters in the HCM)."""
        counter = self._xx.get(code // 100)
        if counter is not None:
            counter.inc()

    def __repr__(self) -> str:
        return f"HttpStats({self.prefix!r})"


class ListenerStats:
    """``listener.<address>.*`` (address written ``0.0.0.0_15006``)."""

    def __init__(self, store: StatsStore, address: str) -> None:
        prefix = f"listener.{address}."
        self.downstream_cx_total = store.counter(prefix + "downstream_cx_total")
        self.downstream_cx_destroy = store.counter(prefix + "downstream_cx_destroy")
        self.downstream_cx_active = store.gauge(prefix + "downstream_cx_active")
        self.no_filter_chain_match = store.counter(prefix + "no_filter_chain_match")
        self.downstream_cx_length_ms = store.histogram(prefix + "downstream_cx_length_ms")

    def __repr__(self) -> str:
        return f"ListenerStats({self.downstream_cx_total.name!r})"


@dataclass(frozen=True)
class PeerInfo:
    """Workload labels of the other side (Istio metadata exchange), ``unknown`` when absent."""

    workload: str = "unknown"
    namespace: str = "unknown"
    app: str = "unknown"
    version: str = "unknown"
    cluster_id: str = "unknown"
    principal: str = "unknown"

    @property
    def canonical_service(self) -> str:
        """Canonical service: the app label, else the workload."""
        return self.app if self.app != "unknown" else self.workload

    @property
    def canonical_revision(self) -> str:
        """Canonical revision: the version label, else ``latest``."""
        return self.version if self.version != "unknown" else "latest"

    @classmethod
    def from_pod(cls, pod: PodInfo) -> PeerInfo:
        """Labels of this sidecar's own pod."""
        return cls(workload=pod.workload, namespace=pod.namespace, app=pod.app,
                   version=pod.version, cluster_id=pod.cluster_id, principal="unknown")


UNKNOWN_PEER = PeerInfo()


@dataclass(frozen=True)
class DestinationService:
    """Destination service labels."""

    service: str
    name: str
    namespace: str


class IstioMetrics:
    """Istio standard metrics (``istiocustom`` namespace, labels in push order, ENVOY.md §4)."""

    def __init__(self, store: StatsStore) -> None:
        self._store = store
        self._cache: dict[tuple[object, ...], tuple[Counter, Histogram, Histogram, Histogram]] = {}
        self._tcp_cache: dict[tuple[object, ...], tuple[Counter, Counter, Counter, Counter]] = {}

    @staticmethod
    def labels(reporter: str, source: PeerInfo, dest: PeerInfo, svc: DestinationService,
               protocol: str, response_code: int | None, response_flags: str,
               security_policy: str) -> Tags:
        """The 25 labels of ``istio_requests_total`` in order (TCP metrics omit code/grpc)."""
        out: list[tuple[str, str]] = [
            ("reporter", reporter),
            ("source_workload", source.workload),
            ("source_canonical_service", source.canonical_service),
            ("source_canonical_revision", source.canonical_revision),
            ("source_workload_namespace", source.namespace),
            ("source_principal", source.principal),
            ("source_app", source.app),
            ("source_version", source.version),
            ("source_cluster", source.cluster_id),
            ("destination_workload", dest.workload),
            ("destination_workload_namespace", dest.namespace),
            ("destination_principal", dest.principal),
            ("destination_app", dest.app),
            ("destination_version", dest.version),
            ("destination_service", svc.service),
            ("destination_canonical_service", dest.canonical_service),
            ("destination_canonical_revision", dest.canonical_revision),
            ("destination_service_name", svc.name),
            ("destination_service_namespace", svc.namespace),
            ("destination_cluster", dest.cluster_id),
            ("request_protocol", protocol),
        ]
        if response_code is not None:
            out += [("response_code", str(response_code)), ("grpc_response_status", "")]
        out += [("response_flags", response_flags),
                ("connection_security_policy", security_policy)]
        return tuple(out)

    def record_request(self, tags: Tags, duration_ms: float, request_bytes: int,
                       response_bytes: int) -> None:
        """Count one finished HTTP request (``istio_requests_total`` and the histograms)."""
        stats = self._cache.get(tags)
        if stats is None:
            s = self._store
            stats = (s.counter(tagged_name(ISTIO_REQUESTS_TOTAL, tags), tags),
                     s.histogram(tagged_name(ISTIO_REQUEST_DURATION, tags), tags),
                     s.histogram(tagged_name(ISTIO_REQUEST_BYTES, tags), tags),
                     s.histogram(tagged_name(ISTIO_RESPONSE_BYTES, tags), tags))
            self._cache[tags] = stats
        stats[0].inc()
        stats[1].record(duration_ms)
        stats[2].record(request_bytes)
        stats[3].record(response_bytes)

    def record_tcp(self, tags: Tags, *, opened: bool = False, closed: bool = False,
                   sent_bytes: int = 0, received_bytes: int = 0) -> None:
        """Update the ``istio_tcp_*`` counters for one connection."""
        stats = self._tcp_cache.get(tags)
        if stats is None:
            s = self._store
            stats = tuple(s.counter(tagged_name(n, tags), tags) for n in  # type: ignore[assignment]
                          (ISTIO_TCP_OPENED, ISTIO_TCP_CLOSED, ISTIO_TCP_SENT, ISTIO_TCP_RECEIVED))
            self._tcp_cache[tags] = stats  # type: ignore[assignment]
        if opened:
            stats[0].inc()
        if closed:
            stats[1].inc()
        if sent_bytes:
            stats[2].inc(sent_bytes)
        if received_bytes:
            stats[3].inc(received_bytes)

    def __repr__(self) -> str:
        return f"IstioMetrics(series={len(self._cache) + len(self._tcp_cache)})"


class ProxyStats:
    """All stat trees of one sidecar, created lazily per cluster / HCM prefix / listener."""

    def __init__(self, store: StatsStore, delimited: bool = True) -> None:
        self.store = store
        self.delimited = delimited
        self.istio = IstioMetrics(store)
        self._clusters: dict[str, ClusterStats] = {}
        self._http: dict[str, HttpStats] = {}
        self._listeners: dict[str, ListenerStats] = {}
        store.gauge("server.state").set(0)  # LIVE
        store.gauge("listener_manager.workers_started").set(1)
        store.gauge("server.live").set(1)
        store.gauge("server.concurrency").set(1)

    def cluster(self, name: str) -> ClusterStats:
        """Stats of cluster ``name``."""
        cs = self._clusters.get(name)
        if cs is None:
            cs = self._clusters[name] = ClusterStats(self.store, name, self.delimited)
        return cs

    def http(self, stat_prefix: str) -> HttpStats:
        """Stats of the HCM with ``stat_prefix`` (e.g. ``outbound_0.0.0.0_8080``)."""
        hs = self._http.get(stat_prefix)
        if hs is None:
            hs = self._http[stat_prefix] = HttpStats(self.store, stat_prefix, self.delimited)
        return hs

    def listener(self, address: str) -> ListenerStats:
        """Stats of the listener at ``address`` (e.g. ``0.0.0.0_15006``)."""
        ls = self._listeners.get(address)
        if ls is None:
            ls = self._listeners[address] = ListenerStats(self.store, address)
        return ls

    def __repr__(self) -> str:
        return (f"ProxyStats(clusters={len(self._clusters)}, http={len(self._http)}, "
                f"listeners={len(self._listeners)})")
