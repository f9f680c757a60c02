"""The lab's topology as plain data: nodes, workloads, pods, services (no I/O).

Built from real Kubernetes YAML by :mod:`meshlab.manifests.loader`; both envs consume it. Pod
names follow Kubernetes: StatefulSet replicas are ``<name>-<ordinal>``; Deployment replicas are
``<name>-<ordinal>`` too (a stable stand-in for the ReplicaSet hash, documented difference).

Sidecar injection follows Istio: a pod is meshed when its namespace has
``istio-injection=enabled`` and neither the pod annotation nor the label
``sidecar.istio.io/inject`` is ``"false"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshlab.proxy.config.policy import SocketOption, TcpKeepalive
from meshlab.proxy.config.protocols import protocol_for_port


@dataclass(frozen=True)
class ContainerPort:
    """A container port: ``name`` (Istio protocol source), ``port`` (TCP port number)."""

    name: str
    port: int

    @property
    def protocol(self) -> str:
        """Mesh protocol derived from the name (see :func:`protocol_for_port`)."""
        return protocol_for_port(self.name)


@dataclass(frozen=True)
class Container:
    """A container: image reference, command/args as in the manifest, ports, and its
    ``resources.limits``: ``cpu_limit_m`` (millicores) and ``memory_limit_bytes`` (None: no
    limit)."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    cpu_limit_m: int | None = None
    memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class Workload:
    """A StatefulSet or Deployment.

    Attributes:
        kind: ``StatefulSet`` or ``Deployment``.
        name: object name.
        namespace: namespace.
        replicas: desired pod count.
        labels: pod template labels.
        annotations: pod template annotations.
        containers: pod containers.
        node_names: nodes allowed by required node affinity on ``kubernetes.io/hostname``
            (empty: any node).
        source: manifest file it came from.
        proxy_cpu_limit_m: the sidecar's CPU limit in millicores, from Istio's
            ``sidecar.istio.io/proxyCPULimit`` annotation (None: no limit).
        proxy_memory_limit_bytes: the sidecar's memory limit, from
            ``sidecar.istio.io/proxyMemoryLimit`` (None: no limit).
    """

    kind: str
    name: str
    namespace: str
    replicas: int
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: tuple[Container, ...]
    node_names: tuple[str, ...] = ()
    source: str = ""
    proxy_cpu_limit_m: int | None = None
    proxy_memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class ServicePort:
    """A Service port: ``port`` (ClusterIP side) → ``target_port`` (pod side)."""

    name: str
    port: int
    target_port: int
    app_protocol: str | None = None

    @property
    def protocol(self) -> str:
        """Mesh protocol (see :func:`protocol_for_port`)."""
        return protocol_for_port(self.name, self.app_protocol)


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service (ClusterIP semantics; NodePort is accepted, node ports unused)."""

    name: str
    namespace: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]
    cluster_ip: str | None = None
    source: str = ""

    def fqdn(self, cluster_domain: str = "cluster.local") -> str:
        """``<name>.<namespace>.svc.<cluster_domain>``, the host part of Istio cluster names."""
        return f"{self.name}.{self.namespace}.svc.{cluster_domain}"


@dataclass(frozen=True)
class Node:
    """A lab node (a netns in the local env, a machine on a cluster)."""

    name: str


@dataclass(frozen=True)
class LabCluster:
    """The lab cluster definition (``kind: LabCluster``): nodes and address ranges."""

    name: str
    nodes: tuple[Node, ...]
    underlay_cidr: str = "172.18.0.0/16"
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/16"
    cluster_domain: str = "cluster.local"
    #: ``spec.kubelet.crashLoopBackOffScale``: multiplies the local kubelet's CrashLoopBackOff
    #: durations (10 s … 300 s, reset after 10 min) so suites can watch several restarts.
    backoff_scale: float = 1.0
    source: str = ""


@dataclass(frozen=True)
class Pod:
    """A pod the topology schedules: one replica of a workload on a node."""

    name: str
    namespace: str
    workload: Workload
    node: str
    ordinal: int
    meshed: bool

    @property
    def labels(self) -> dict[str, str]:
        """Pod labels (the workload's template labels)."""
        return self.workload.labels


@dataclass
class Topology:
    """Everything the manifests declare, plus scheduling.

    Attributes:
        cluster: the lab cluster (nodes, ranges).
        namespaces: namespace name → labels.
        workloads: StatefulSets/Deployments in manifest order.
        services: Services in manifest order.
        sources: the manifest files read.
        destination_rules, virtual_services, envoy_filters: Istio traffic configuration
            (``networking.istio.io``), hosts resolved to FQDNs.
    """

    cluster: LabCluster
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    destination_rules: list[DestinationRule] = field(default_factory=list)
    virtual_services: list[VirtualService] = field(default_factory=list)
    envoy_filters: list[EnvoyFilter] = field(default_factory=list)

    def is_meshed(self, workload: Workload) -> bool:
        """Whether Istio would inject a sidecar into this workload's pods."""
        ns_enabled = self.namespaces.get(workload.namespace, {}).get("istio-injection") == "enabled"
        opt = workload.annotations.get("sidecar.istio.io/inject",
                                       workload.labels.get("sidecar.istio.io/inject", ""))
        return ns_enabled and opt.lower() != "false"

    def pods(self) -> list[Pod]:
        """Schedule every replica: required node affinity first, else the least-loaded node.

        Returns:
            Pods in manifest order, deterministic for the same manifests.
        """
        load = {n.name: 0 for n in self.cluster.nodes}
        pods: list[Pod] = []
        for wl in self.workloads:
            for ordinal in range(wl.replicas):
                allowed = [n for n in load if not wl.node_names or n in wl.node_names]
                node = min(allowed, key=lambda n: (load[n], list(load).index(n)))
                load[node] += 1
                pods.append(Pod(name=f"{wl.name}-{ordinal}", namespace=wl.namespace, workload=wl,
                                node=node, ordinal=ordinal, meshed=self.is_meshed(wl)))
        return pods

    def endpoints(self, service: Service) -> list[Pod]:
        """Pods selected by the Service's selector (same namespace), in schedule order."""
        return [p for p in self.pods() if p.namespace == service.namespace
                and service.selector
                and all(p.labels.get(k) == v for k, v in service.selector.items())]

    def service(self, name: str) -> Service:
        """A Service by name.

        Raises:
            KeyError: no Service has that name.
        """
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)


# -- Istio traffic configuration (networking.istio.io; parsed by meshlab.manifests.istio_resources)
# Socket options and keepalive reuse the sidecar contract's Envoy types (meshlab.proxy.config.policy).

@dataclass(frozen=True)
class ConnectionPoolSpec:
    """DR ``trafficPolicy.connectionPool`` as written (0 / None = unset, Istio's FIXME semantics).

    Attributes:
        max_connections: ``tcp.maxConnections``.
        connect_timeout_s: ``tcp.connectTimeout``.
        tcp_keepalive: ``tcp.tcpKeepalive``.
        tcp_idle_timeout_s: ``tcp.idleTimeout``.
        http1_max_pending_requests: ``http.http1MaxPendingRequests``.
        http2_max_requests: ``http.http2MaxRequests``.
        max_requests_per_connection: ``http.maxRequestsPerConnection``.
        max_retries: ``http.maxRetries``.
        http_idle_timeout_s: ``http.idleTimeout``.
    """

    max_connections: int = 0
    connect_timeout_s: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    tcp_idle_timeout_s: float | None = None
    http1_max_pending_requests: int = 0
    http2_max_requests: int = 0
    max_requests_per_connection: int = 0
    max_retries: int = 0
    http_idle_timeout_s: float | None = None


@dataclass(frozen=True)
class OutlierSpec:
    """DR ``trafficPolicy.outlierDetection`` as written (None / 0 = unset)."""

    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval_s: float | None = None
    base_ejection_time_s: float | None = None
    max_ejection_percent: int = 0
    min_health_percent: int = 0


@dataclass(frozen=True)
class TrafficPolicySpec:
    """A DR ``trafficPolicy`` (or one ``portLevelSettings`` entry)."""

    connection_pool: ConnectionPoolSpec | None = None
    outlier_detection: OutlierSpec | None = None


@dataclass(frozen=True)
class DestinationRule:
    """``networking.istio.io`` DestinationRule: ``host`` (FQDN) and its traffic policy.

    ``port_policies`` maps a port number to its ``portLevelSettings`` entry.
    """

    name: str
    namespace: str
    host: str
    traffic_policy: TrafficPolicySpec
    port_policies: dict[int, TrafficPolicySpec] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class HttpRouteSpec:
    """One VS ``http[]`` entry with its single destination.

    Attributes:
        host: destination FQDN.
        port: destination port, or None (every port of the host).
        timeout_s: ``timeout``; None = unset, 0 = disabled.
        retry_attempts: ``retries.attempts`` (None = no ``retries`` block).
        retry_on: ``retries.retryOn`` ("" = unset).
        per_try_timeout_s: ``retries.perTryTimeout``.
        abort_status: ``fault.abort.httpStatus``; abort_percent its ``percentage.value``.
        delay_s: ``fault.delay.fixedDelay``; delay_percent its ``percentage.value``.
    """

    host: str
    port: int | None = None
    timeout_s: float | None = None
    retry_attempts: int | None = None
    retry_on: str = ""
    per_try_timeout_s: float | None = None
    abort_status: int | None = None
    abort_percent: float = 100.0
    delay_s: float | None = None
    delay_percent: float = 100.0


@dataclass(frozen=True)
class VirtualService:
    """``networking.istio.io`` VirtualService: ``hosts`` (FQDNs) and its HTTP route."""

    name: str
    namespace: str
    hosts: tuple[str, ...]
    http: tuple[HttpRouteSpec, ...]
    source: str = ""


@dataclass(frozen=True)
class EnvoyFilterPatch:
    """One ``configPatches[]`` entry (``MERGE``, or ``INSERT_BEFORE``/``INSERT_FIRST`` of the
    buffer filter).

    Attributes:
        apply_to: ``LISTENER``, ``CLUSTER`` or ``HTTP_FILTER``.
        context: ``SIDECAR_INBOUND``, ``SIDECAR_OUTBOUND`` or ``ANY``.
        port: ``match.listener.portNumber`` / ``match.cluster.portNumber``, or None.
        service: ``match.cluster.service`` (FQDN), or None.
        socket_options: listener ``socket_options`` / cluster
            ``upstream_bind_config.socket_options``.
        tcp_keepalive: cluster ``upstream_connection_options.tcp_keepalive``.
        max_request_bytes: ``HTTP_FILTER``: the inserted buffer filter's limit.
    """

    apply_to: str
    context: str
    port: int | None = None
    service: str | None = None
    socket_options: tuple[SocketOption, ...] = ()
    tcp_keepalive: TcpKeepalive | None = None
    max_request_bytes: int | None = None


@dataclass(frozen=True)
class EnvoyFilter:
    """``networking.istio.io`` EnvoyFilter; ``workload_labels`` None selects every workload of
    the namespace (every namespace for the root namespace ``istio-system``)."""

    name: str
    namespace: str
    workload_labels: dict[str, str] | None
    patches: tuple[EnvoyFilterPatch, ...]
    source: str = ""

    def selects(self, namespace: str, labels: dict[str, str]) -> bool:
        """Whether this filter applies to a pod in ``namespace`` with ``labels``."""
        if self.namespace not in (namespace, ISTIO_ROOT_NAMESPACE):
            return False
        sel = self.workload_labels or {}
        return all(labels.get(k) == v for k, v in sel.items())


#: Istio's config root namespace: its EnvoyFilters apply mesh-wide.
ISTIO_ROOT_NAMESPACE = "istio-system"
