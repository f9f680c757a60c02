"""Cluster and endpoint selection (sans-IO; ENVOY.md §7).

Rules:

- Outbound (``virtualOutbound``, 15001): the original destination ``ip:port`` is matched against
  Service ClusterIPs (``port``) and endpoint IPs (``target_port``); a match selects the cluster
  ``outbound|<port>||<fqdn>`` and the port's protocol.
- An unknown IP on a port where some known Service speaks HTTP goes through that port's HTTP
  listener and the ``allow_any`` route to ``PassthroughCluster`` (as Istio's ``0.0.0.0_<port>``
  listener does); any other unknown destination is TCP-proxied to ``PassthroughCluster``.
  With ``outbound_traffic_policy: REGISTRY_ONLY`` both go to ``BlackHoleCluster`` instead (HTTP:
  Istio's ``block_all`` route, a direct 502; TCP: closed at once with ``UH``).
- Inbound (``virtualInbound``, 15006): a declared pod port selects ``inbound|<port>||`` with the
  upstream bound to 127.0.0.6; undeclared ports go to ``InboundPassthroughCluster`` (TCP).
- Endpoints are picked round robin per cluster; retries prefer hosts not tried yet
  (Istio's ``previous_hosts`` retry predicate).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meshlab.proxy.config.policy import (
    DEFAULT_CLUSTER_POLICY,
    DEFAULT_ROUTE_POLICY,
    ClusterPolicy,
    RoutePolicy,
)
from meshlab.proxy.config.sidecar import Service, ServicePort, SidecarConfig
from meshlab.proxy.upstream.outlier import Address, OutlierRegistry

INBOUND_BIND_IP = "127.0.0.6"  # InboundPassthroughBindIpv4 (ENVOY.md §6)
PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
BLACKHOLE = "BlackHoleCluster"  # STATIC, no endpoints (ENVOY.md §7)

__all__ = ["Address", "Cluster", "Router"]


@dataclass(frozen=True)
class Cluster:
    """Where a downstream connection or request goes.

    Attributes:
        name: Envoy cluster name, e.g. ``outbound|8080||a.ns.svc.cluster.local``.
        direction: ``outbound`` or ``inbound``.
        protocol: ``http``, ``grpc`` or ``tcp``.
        listener_port: the service port (the HCM/listener port the request is charged to).
        endpoints: upstream addresses (empty → ``UH``).
        bind_ip: source address for upstream connections (127.0.0.6 inbound), or None.
        route_name: ``%ROUTE_NAME%`` (``default``, ``allow_any``; ``-`` for TCP).
        service: the Service, when known.
        service_port: the Service port, when known.
        policy: cluster policy (DestinationRule; :mod:`meshlab.proxy.config.policy`).
        route_policy: route policy (VirtualService) of the route to this cluster.
    """

    name: str
    direction: str
    protocol: str
    listener_port: int
    endpoints: tuple[Address, ...]
    bind_ip: str | None = None
    route_name: str = "default"
    service: Service | None = field(default=None, compare=False)
    service_port: ServicePort | None = field(default=None, compare=False)
    policy: ClusterPolicy = field(default=DEFAULT_CLUSTER_POLICY, compare=False)
    route_policy: RoutePolicy = field(default=DEFAULT_ROUTE_POLICY, compare=False)

    @property
    def is_http(self) -> bool:
        """HTTP/1.1 is proxied for http and grpc ports (grpc over h2 is not implemented)."""
        return self.protocol == "http"

    @property
    def http_stat_prefix(self) -> str:
        """HCM stat prefix (without the ``;`` delimiter): ``outbound_0.0.0.0_<port>``."""
        return f"{self.direction}_0.0.0.0_{self.listener_port}"

    @property
    def destination_service(self) -> str:
        """``destination_service`` label: the FQDN, or the cluster name for passthrough."""
        return self.service.fqdn if self.service else self.name

    @property
    def destination_service_name(self) -> str:
        """``destination_service_name`` label."""
        return self.service.name if self.service else self.name

    @property
    def destination_service_namespace(self) -> str:
        """``destination_service_namespace`` label."""
        return self.service.namespace if self.service else "unknown"


class Router:
    """Chooses clusters and endpoints from the sidecar config; holds round-robin state."""

    def __init__(self, config: SidecarConfig) -> None:
        self._rr: dict[str, int] = {}
        self.outliers = OutlierRegistry()  # ejected hosts are skipped by pick (ENVOY.md §8)
        self.generation = 0
        self.update(config)

    def update(self, config: SidecarConfig) -> None:
        """Take a new config (istiod's push: routes, policies, endpoints) without dropping
        anything in flight: round-robin positions and outlier state stay, ``generation`` grows,
        and each downstream connection picks up its cluster's new version at its next request
        (:meth:`current`), as Envoy applies an RDS update to the next request on a
        connection."""
        self.config = config
        self._by_vip: dict[Address, Cluster] = {}
        self._by_endpoint: dict[Address, Cluster] = {}
        self._http_ports: set[int] = set()
        self.generation += 1
        for svc in config.services:
            for sp in svc.ports:
                cluster = Cluster(
                    name=f"outbound|{sp.port}||{svc.fqdn}", direction="outbound",
                    protocol=sp.protocol, listener_port=sp.port,
                    endpoints=tuple((e.ip, sp.target_port) for e in svc.endpoints),
                    route_name="default" if sp.protocol == "http" else "-",
                    service=svc, service_port=sp)
                cluster = self._with_policy(cluster)
                self._by_vip[(svc.cluster_ip, sp.port)] = cluster
                for e in svc.endpoints:
                    self._by_endpoint.setdefault((e.ip, sp.target_port), cluster)
                if sp.protocol == "http":
                    self._http_ports.add(sp.port)
        self._by_name = {c.name: c for c in self._by_vip.values()}
        self._own_service: dict[int, tuple[Service, ServicePort]] = {}
        for svc in config.services:
            if any(e.ip == config.pod.ip for e in svc.endpoints):
                for sp in svc.ports:
                    self._own_service.setdefault(sp.target_port, (svc, sp))

    def current(self, cluster: Cluster) -> Cluster:
        """``cluster`` as the current config has it: the same service cluster rebuilt, or, for
        inbound and passthrough clusters, the same one with the current policies."""
        fresh = self._by_name.get(cluster.name)
        if fresh is not None:
            return fresh
        pol = self.config.policies
        return replace(cluster, policy=pol.cluster(cluster.name),
                       route_policy=pol.route(cluster.name))

    def _with_policy(self, cluster: Cluster) -> Cluster:
        pol = self.config.policies
        if cluster.name not in pol.clusters and cluster.name not in pol.routes:
            return cluster
        return replace(cluster, policy=pol.cluster(cluster.name),
                       route_policy=pol.route(cluster.name))

    def outbound(self, dst: Address) -> Cluster:
        """The cluster for an outbound connection to original destination ``dst``."""
        cluster = self._by_vip.get(dst) or self._by_endpoint.get(dst)
        if cluster is not None:
            return cluster
        if self.config.outbound_traffic_policy == "REGISTRY_ONLY":
            # Istio REGISTRY_ONLY: HTTP ports get the ``block_all`` route (direct 502), other
            # traffic the ``virtualOutbound-blackhole`` chain; BlackHoleCluster has no endpoints.
            http = dst[1] in self._http_ports
            return Cluster(BLACKHOLE, "outbound", "http" if http else "tcp", dst[1], (),
                           route_name="block_all" if http else "-")
        if dst[1] in self._http_ports:
            return self._with_policy(Cluster(PASSTHROUGH, "outbound", "http", dst[1], (dst,),
                                             route_name="allow_any"))
        return self._with_policy(Cluster(PASSTHROUGH, "outbound", "tcp", dst[1], (dst,),
                                         route_name="-"))

    def inbound(self, dst: Address) -> Cluster:
        """The cluster for an inbound connection to ``dst`` (pod IP and app port)."""
        declared = self.config.inbound_port(dst[1])
        own = self._own_service.get(dst[1])
        svc, sp = own if own else (None, None)
        if declared is None:
            return Cluster(INBOUND_PASSTHROUGH, "inbound", "tcp", dst[1], (dst,),
                           bind_ip=INBOUND_BIND_IP, route_name="-", service=svc, service_port=sp)
        return self._with_policy(Cluster(
            f"inbound|{dst[1]}||", "inbound", declared.protocol, dst[1], (dst,),
            bind_ip=INBOUND_BIND_IP, route_name="default" if declared.protocol == "http" else "-",
            service=svc, service_port=sp))

    def pick(self, cluster: Cluster, tried: frozenset[Address] | set[Address] = frozenset()
             ) -> Address | None:
        """Next endpoint of ``cluster`` by round robin, avoiding ``tried`` when possible.

        Returns:
            An address, or None when the cluster has no endpoints or every one is ejected by
            outlier detection outside panic mode (→ ``UH``).
        """
        eps = cluster.endpoints
        if cluster.policy.outlier_detection is not None:
            eps = self.outliers.healthy(cluster)
        if not eps:
            return None
        n = len(eps)
        start = self._rr.get(cluster.name, 0)
        for i in range(n):  # Istio: host_selection_retry_max_attempts 5 ≈ try every host once
            ep = eps[(start + i) % n]
            if ep not in tried:
                self._rr[cluster.name] = (start + i + 1) % n
                return ep
        self._rr[cluster.name] = (start + 1) % n
        return eps[start % n]

    def __repr__(self) -> str:
        return (f"Router(vips={len(self._by_vip)}, endpoints={len(self._by_endpoint)}, "
                f"http_ports={sorted(self._http_ports)})")
