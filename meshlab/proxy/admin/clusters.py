"""The sidecar's clusters and listeners as istio-proxy shows them: admin ``/clusters`` and
``/listeners`` (sans-IO; ENVOY.md §5, §7).

:func:`cluster_inventory` lists every cluster Istio would push for this pod (outbound
``outbound|<port>||<fqdn>`` EDS clusters, ``inbound|<port>||`` and the passthrough specials as
ORIGINAL_DST, ``BlackHoleCluster``, and the bootstrap's static ``prometheus_stats``, ``agent``,
``sds-grpc``, ``xds-grpc``). ``/clusters`` prints, per cluster (Envoy
``ClustersHandler::writeClustersAsText`` order): ``observability_name``, ``outlier::…`` (only
with outlier detection), both priorities' circuit-breaker thresholds, ``added_via_api``,
``eds_service_name`` (EDS only), then per host its stats in name order and ``hostname``,
``health_flags``, ``weight``, ``region``, ``zone``, ``sub_zone``, ``canary``, ``priority``,
``success_rate``, ``local_origin_success_rate``. ORIGINAL_DST clusters show the hosts traffic
created (as Envoy does); EDS/STATIC clusters their configured endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from meshlab.proxy.config.policy import DEFAULT_CLUSTER_POLICY, CircuitBreakers, ClusterPolicy
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.stats.host_stats import HOST_GAUGES, HostStats
from meshlab.proxy.stats.metrics import ProxyStats

#: Envoy's own circuit-breaker defaults (bootstrap clusters and every ``high_priority``).
ENVOY_DEFAULT_BREAKERS = CircuitBreakers(1024, 1024, 1024, 3)
XDS_PIPE = "./etc/istio/proxy/XDS"
SDS_PIPE = "./var/run/secrets/workload-spiffe-uds/socket"

HostAddr = tuple[str, int] | str  # (ip, port) or a unix pipe path
#: ``(cluster name, (ip, port)) -> ejected?`` (``OutlierRegistry.is_ejected``).
EjectedFn = Callable[[str, tuple[str, int]], bool]


def _ejected(fn: EjectedFn | None, cluster: str, host: HostAddr) -> bool:
    return fn is not None and isinstance(host, tuple) and fn(cluster, host)


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster as configured (what CDS/EDS or the bootstrap gives Envoy).

    Attributes:
        name: cluster name.
        kind: ``EDS``, ``ORIGINAL_DST`` or ``STATIC``.
        hosts: configured endpoints (EDS/STATIC); ORIGINAL_DST hosts come from traffic.
        added_via_api: pushed by istiod (True) or in the bootstrap (False).
        policy: the cluster policy (DestinationRule), defaults when none.
        service: ``(fqdn, name, namespace, port)`` of the Service, or None.
        bind_ip: ``upstream_bind_config`` source address (127.0.0.6 inbound) or None.
        direction: ``outbound``, ``inbound`` or ``""`` for bootstrap clusters.
    """

    name: str
    kind: str
    hosts: tuple[HostAddr, ...] = ()
    added_via_api: bool = True
    policy: ClusterPolicy = field(default=DEFAULT_CLUSTER_POLICY)
    service: tuple[str, str, str, int] | None = None
    bind_ip: str | None = None
    direction: str = "outbound"

    @property
    def breakers(self) -> tuple[CircuitBreakers, CircuitBreakers]:
        """(default priority, high priority) thresholds."""
        if not self.added_via_api:
            return ENVOY_DEFAULT_BREAKERS, ENVOY_DEFAULT_BREAKERS
        return self.policy.circuit_breakers, ENVOY_DEFAULT_BREAKERS


def cluster_inventory(config: SidecarConfig) -> list[ClusterInfo]:
    """Every cluster of this sidecar, sorted by name like Envoy's cluster map."""
    pol = config.policies
    out = [ClusterInfo("BlackHoleCluster", "STATIC"),
           ClusterInfo("PassthroughCluster", "ORIGINAL_DST", policy=pol.cluster("PassthroughCluster")),
           ClusterInfo("InboundPassthroughCluster", "ORIGINAL_DST", bind_ip="127.0.0.6",
                       direction="inbound"),
           ClusterInfo("prometheus_stats", "STATIC", (("127.0.0.1", config.ports.admin),),
                       added_via_api=False, direction=""),
           ClusterInfo("agent", "STATIC", (("127.0.0.1", config.ports.agent),),
                       added_via_api=False, direction=""),
           ClusterInfo("sds-grpc", "STATIC", (SDS_PIPE,), added_via_api=False, direction=""),
           ClusterInfo("xds-grpc", "STATIC", (XDS_PIPE,), added_via_api=False, direction="")]
    for svc in config.services:
        for sp in svc.ports:
            name = f"outbound|{sp.port}||{svc.fqdn}"
            out.append(ClusterInfo(name, "EDS", tuple((e.ip, sp.target_port) for e in svc.endpoints),
                                   policy=pol.cluster(name),
                                   service=(svc.fqdn, svc.name, svc.namespace, sp.port)))
    for ip in config.inbound:
        name = f"inbound|{ip.port}||"
        out.append(ClusterInfo(name, "ORIGINAL_DST", policy=pol.cluster(name), bind_ip="127.0.0.6",
                               direction="inbound"))
    return sorted(out, key=lambda c: c.name)


def _hosts(info: ClusterInfo, stats: ProxyStats) -> list[tuple[HostAddr, HostStats]]:
    registry = stats.cluster(info.name).hosts
    if info.kind == "ORIGINAL_DST":
        return [(addr, hs) for addr, hs in sorted(registry)]
    return [(h, registry.get(h) if isinstance(h, tuple) else HostStats()) for h in info.hosts]


def _addr(host: HostAddr) -> str:
    return host if isinstance(host, str) else f"{host[0]}:{host[1]}"


def render_clusters_text(config: SidecarConfig, stats: ProxyStats,
                         is_ejected: EjectedFn | None = None) -> str:
    """``GET /clusters``: one ``<cluster>::<fact>::<value>`` line per fact.

    ``is_ejected`` marks outlier-ejected hosts ``health_flags::/failed_outlier_check``
    (Envoy ``HostUtility::healthFlagsToString``).
    """
    lines: list[str] = []
    for info in cluster_inventory(config):
        c = info.name
        lines.append(f"{c}::observability_name::{c}")
        if info.policy.outlier_detection is not None:
            for k in ("success_rate_average", "success_rate_ejection_threshold",
                      "local_origin_success_rate_average",
                      "local_origin_success_rate_ejection_threshold"):
                lines.append(f"{c}::outlier::{k}::-1")
        for prio, cb in zip(("default_priority", "high_priority"), info.breakers):
            for k in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
                lines.append(f"{c}::{prio}::{k}::{getattr(cb, k)}")
        lines.append(f"{c}::added_via_api::{str(info.added_via_api).lower()}")
        if info.kind == "EDS":
            lines.append(f"{c}::eds_service_name::{c}")
        for host, hs in _hosts(info, stats):
            a = _addr(host)
            lines.extend(f"{c}::{a}::{k}::{v}" for k, v in hs.items())
            health = "/failed_outlier_check" if _ejected(is_ejected, c, host) else "healthy"
            for k, v in (("hostname", ""), ("health_flags", health), ("weight", "1"),
                         ("region", ""), ("zone", ""), ("sub_zone", ""), ("canary", "false"),
                         ("priority", "0"), ("success_rate", "-1"),
                         ("local_origin_success_rate", "-1")):
                lines.append(f"{c}::{a}::{k}::{v}")
    return "".join(line + "\n" for line in lines)


def _socket_address(host: HostAddr) -> dict[str, object]:
    if isinstance(host, str):
        return {"pipe": {"path": host}}
    return {"socket_address": {"address": host[0], "port_value": host[1]}}


def _thresholds(cb: CircuitBreakers, priority: str | None) -> dict[str, object]:
    out: dict[str, object] = {"priority": priority} if priority else {}
    out.update(max_connections=cb.max_connections, max_pending_requests=cb.max_pending_requests,
               max_requests=cb.max_requests, max_retries=cb.max_retries)
    return out


def render_clusters_json(config: SidecarConfig, stats: ProxyStats,
                         is_ejected: EjectedFn | None = None) -> str:
    """``GET /clusters?format=json``: ``admin.v3.Clusters`` (proto JSON: zero values omitted).

    An outlier-ejected host has ``health_status.failed_outlier_check: true``.
    """
    statuses = []
    for info in cluster_inventory(config):
        default, high = info.breakers
        doc: dict[str, object] = {
            "name": info.name, "observability_name": info.name,
            "circuit_breakers": {"thresholds": [_thresholds(default, None),
                                                _thresholds(high, "HIGH")]}}
        if info.added_via_api:
            doc["added_via_api"] = True
        if info.kind == "EDS":
            doc["eds_service_name"] = info.name
        hosts = []
        for host, hs in _hosts(info, stats):
            counters = [{"name": k, **({"value": str(v)} if v else {})}
                        for k, v in hs.items() if k not in HOST_GAUGES]
            gauges = [{"name": k, "type": "GAUGE", **({"value": str(v)} if v else {})}
                      for k, v in hs.items() if k in HOST_GAUGES]
            health: dict[str, object] = {"eds_health_status": "HEALTHY"}
            if _ejected(is_ejected, info.name, host):
                health["failed_outlier_check"] = True
            hosts.append({"address": _socket_address(host), "stats": counters + gauges,
                          "health_status": health, "weight": 1,
                          "locality": {}})
        if hosts:
            doc["host_statuses"] = hosts
        statuses.append(doc)
    return json.dumps({"cluster_statuses": statuses}, indent=1)


@dataclass(frozen=True)
class ListenerInfo:
    """One Envoy listener: name, address, traffic direction, and whether it binds a port."""

    name: str
    address: tuple[str, int]
    direction: str = "UNSPECIFIED"
    bind: bool = True


def listener_inventory(config: SidecarConfig) -> list[ListenerInfo]:
    """Istio's listeners for this pod: capture, per-port outbound (not bound), 15090 (ENVOY.md §7)."""
    p = config.ports
    out = [ListenerInfo("virtualOutbound", ("0.0.0.0", p.outbound), "OUTBOUND"),
           ListenerInfo("virtualInbound", ("0.0.0.0", p.inbound), "INBOUND"),
           ListenerInfo(f"0.0.0.0_{p.prometheus}", ("0.0.0.0", p.prometheus))]
    seen: set[str] = set()
    for svc in config.services:
        for sp in svc.ports:
            ip = "0.0.0.0" if sp.protocol == "http" else svc.cluster_ip
            name = f"{ip}_{sp.port}"
            if name not in seen:
                seen.add(name)
                out.append(ListenerInfo(name, (ip, sp.port), "OUTBOUND", bind=False))
    return out


def render_listeners(config: SidecarConfig, fmt: str = "text") -> str:
    """``GET /listeners`` (``name::ip:port`` lines) or ``?format=json`` (``ListenersStatus``)."""
    infos = listener_inventory(config)
    if fmt == "json":
        return json.dumps({"listener_statuses": [
            {"name": li.name, "local_address": _socket_address(li.address)} for li in infos]},
            indent=1)
    return "".join(f"{li.name}::{li.address[0]}:{li.address[1]}\n" for li in infos)
