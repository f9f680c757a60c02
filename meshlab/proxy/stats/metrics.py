"""Istio standard metrics and the sidecar's stat trees (sans-IO; ENVOY.md §3, §4).

:class:`ProxyStats` creates the Envoy trees of :mod:`meshlab.proxy.stats.trees` lazily per
cluster / HCM prefix / listener; :class:`IstioMetrics` keeps the ``istiocustom`` metrics with
the 25 labels in ``tags_`` push order, ``istio_build``, and the periodic TCP byte reports.
Stats objects are resolved once and cached so the per-request cost is a few increments.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.proxy.config.sidecar import SidecarPod
from meshlab.proxy.stats.store import Counter, Histogram, StatsStore, Tags, tagged_name
from meshlab.proxy.stats.trees import ClusterStats, HttpStats, ListenerStats, StatTree

__all__ = ["ClusterStats", "DestinationService", "HttpStats", "IstioMetrics", "ListenerStats",
           "PeerInfo", "ProxyStats", "StatTree", "TcpReport"]

ISTIO_REQUESTS_TOTAL = "istiocustom.istio_requests_total"
ISTIO_REQUEST_DURATION = "istiocustom.istio_request_duration_milliseconds"
ISTIO_REQUEST_BYTES = "istiocustom.istio_request_bytes"
ISTIO_RESPONSE_BYTES = "istiocustom.istio_response_bytes"
ISTIO_TCP_OPENED = "istiocustom.istio_tcp_connections_opened_total"
ISTIO_TCP_CLOSED = "istiocustom.istio_tcp_connections_closed_total"
ISTIO_TCP_SENT = "istiocustom.istio_tcp_sent_bytes_total"
ISTIO_TCP_RECEIVED = "istiocustom.istio_tcp_received_bytes_total"

ISTIO_BUILD = "istiocustom.istio_build"
#: ``tag`` label of ``istio_build`` (the Istio release whose proxy meshlab plays).
ISTIO_VERSION = "1.23.0"


#: Memo of :meth:`IstioMetrics.labels` (argument tuple → label tuple), cleared when full.
_LABELS: dict[tuple[object, ...], Tags] = {}
_LABELS_MAX = 4096


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
    def from_pod(cls, pod: SidecarPod) -> PeerInfo:
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
        self._open_tcp: set[TcpReport] = set()
        build = (("component", "proxy"), ("tag", ISTIO_VERSION))
        store.gauge(tagged_name(ISTIO_BUILD, build), build).set(1)

    @staticmethod
    def labels(reporter: str, source: PeerInfo, dest: PeerInfo, svc: DestinationService,
               protocol: str, response_code: int | None, response_flags: str,
               security_policy: str) -> Tags:
        """The 25 labels of ``istio_requests_total`` in order (TCP metrics omit code/grpc).

        Memoised: a sidecar sees few distinct label sets, and every request needs one.
        """
        key = (reporter, source, dest, svc, protocol, response_code, response_flags,
               security_policy)
        tags = _LABELS.get(key)
        if tags is None:
            if len(_LABELS) >= _LABELS_MAX:
                _LABELS.clear()
            tags = _LABELS[key] = IstioMetrics._build_labels(*key)
        return tags

    @staticmethod
    def _build_labels(reporter: str, source: PeerInfo, dest: PeerInfo, svc: DestinationService,
                      protocol: str, response_code: int | None, response_flags: str,
                      security_policy: str) -> Tags:
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
            opened_c, closed_c, sent_c, received_c = (
                s.counter(tagged_name(n, tags), tags) for n in
                (ISTIO_TCP_OPENED, ISTIO_TCP_CLOSED, ISTIO_TCP_SENT, ISTIO_TCP_RECEIVED))
            stats = self._tcp_cache[tags] = (opened_c, closed_c, sent_c, received_c)
        if opened:
            stats[0].inc()
        if closed:
            stats[1].inc()
        if sent_bytes:
            stats[2].inc(sent_bytes)
        if received_bytes:
            stats[3].inc(received_bytes)

    def open_tcp(self, tags: Tags) -> TcpReport:
        """A TCP connection opened: count it and track its bytes for periodic reports.

        The proxy adds to the returned report's ``sent``/``received`` as bytes flow, and calls
        :meth:`close_tcp` at the end; :meth:`report_tcp` runs every ``tcp_reporting_duration``
        (Istio default 5 s, ENVOY.md §4) so long connections show bytes before they close.
        """
        self.record_tcp(tags, opened=True)
        rep = TcpReport(tags)
        self._open_tcp.add(rep)
        return rep

    def report_tcp(self) -> None:
        """Push the byte deltas of every open TCP connection (the 5 s reporting timer)."""
        for rep in list(self._open_tcp):
            self._push(rep)

    def close_tcp(self, rep: TcpReport) -> None:
        """Final report of a closed connection (``istio_tcp_connections_closed_total``)."""
        self._open_tcp.discard(rep)
        self._push(rep)
        self.record_tcp(rep.tags, closed=True)

    def _push(self, rep: TcpReport) -> None:
        sent, received = rep.sent - rep.reported_sent, rep.received - rep.reported_received
        if sent or received:
            rep.reported_sent, rep.reported_received = rep.sent, rep.received
            self.record_tcp(rep.tags, sent_bytes=sent, received_bytes=received)

    def __repr__(self) -> str:
        return (f"IstioMetrics(series={len(self._cache) + len(self._tcp_cache)}, "
                f"open_tcp={len(self._open_tcp)})")


class TcpReport:
    """Byte counts of one open TCP connection (``sent`` = toward the downstream peer)."""

    __slots__ = ("received", "reported_received", "reported_sent", "sent", "tags")

    def __init__(self, tags: Tags) -> None:
        self.tags = tags
        self.sent = self.received = self.reported_sent = self.reported_received = 0

    def __repr__(self) -> str:
        return f"TcpReport(sent={self.sent}, received={self.received})"


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

    def clusters(self) -> list[ClusterStats]:
        """Every cluster's stats created so far."""
        return list(self._clusters.values())

    def listeners(self) -> list[ListenerStats]:
        """Every listener's stats created so far."""
        return list(self._listeners.values())

    def reset_counters(self) -> None:
        """Admin ``POST /reset_counters``: every counter in the store and every host counter."""
        self.store.reset_counters()
        for cs in self._clusters.values():
            cs.hosts.reset_counters()

    def listener(self, address: str) -> ListenerStats:
        """Stats of the listener at ``address`` (e.g. ``0.0.0.0_15006``)."""
        ls = self._listeners.get(address)
        if ls is None:
            ls = self._listeners[address] = ListenerStats(self.store, address)
        return ls

    def __repr__(self) -> str:
        return (f"ProxyStats(clusters={len(self._clusters)}, http={len(self._http)}, "
                f"listeners={len(self._listeners)})")
