"""The local lab's stand-in for istiod and cluster DNS: per-pod sidecar config and hosts files.

``sidecar_config`` builds the JSON the embedded sidecar reads (docs/CONTRACTS.md §1): the pod's
own inbound ports and every Service with its ClusterIP and endpoints (what Envoy gets from
CDS/EDS), plus the ``policies`` (:mod:`meshlab.proxy.config.policy`) that the manifests'
DestinationRules, VirtualServices and EnvoyFilters give this pod's sidecar (:func:`policies`).
``hosts_file`` and ``resolv_conf`` are the kubelet's: the pod's own names, and the cluster DNS
(:mod:`meshlab.envs.local.kube_dns`) with Kubernetes' search path and ``ndots:5``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from meshlab.envs.local import kube_dns
from meshlab.envs.local.plan import LabPlan, PodPlan
from meshlab.errors import ManifestError
from meshlab.manifests.istio_envoy_filter import CAPTURE_LISTENERS
from meshlab.model import (
    ConnectionPoolSpec,
    DestinationRule,
    OutlierSpec,
    Service,
)
from meshlab.proxy.config.http_filters import BUFFER_FILTER
from meshlab.proxy.config.policy import TcpKeepalive
from meshlab.proxy.config.sidecar import ISTIO_SIDECAR_CONCURRENCY, MAX_CONCURRENCY

DEFAULT_CONNECT_TIMEOUT_S = 10.0  # Istio meshConfig.connectTimeout (ENVOY.md §8)
#: The lab reads tcp_stats every second (Envoy's ``update_period``; unset = only at close)
#: so a fault's retransmissions show while it is active.
TCP_STATS_UPDATE_PERIOD_S = 1.0


def proxy_config(pp: PodPlan) -> dict[str, Any]:
    """The pod's ``proxy.istio.io/config`` annotation (Istio ProxyConfig overrides) as a
    mapping, empty when absent.

    Raises:
        ManifestError: the annotation is not valid YAML or not a mapping.
    """
    wl = pp.pod.workload
    raw = wl.annotations.get("proxy.istio.io/config")
    if not raw:
        return {}
    field = f"{wl.kind}/{wl.name}.spec.template.metadata.annotations.proxy.istio.io/config"
    try:
        cfg = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(wl.source, field, f"invalid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ManifestError(wl.source, field, "expected a ProxyConfig mapping")
    return cfg


def dns_capture(pp: PodPlan) -> bool:
    """Whether the pod's agent proxies DNS: ``proxyMetadata.ISTIO_META_DNS_CAPTURE`` of the
    ``proxy.istio.io/config`` annotation is ``"true"`` (Istio reads it as a boolean string).

    Raises:
        ManifestError: ``proxyMetadata`` is not a mapping.
    """
    meta = proxy_config(pp).get("proxyMetadata") or {}
    if not isinstance(meta, dict):
        wl = pp.pod.workload
        raise ManifestError(wl.source, f"{wl.kind}/{wl.name}.spec.template.metadata.annotations"
                                       ".proxy.istio.io/config.proxyMetadata",
                            "expected a mapping of strings")
    return str(meta.get("ISTIO_META_DNS_CAPTURE", "")).strip().lower() == "true"


def proxy_concurrency(pp: PodPlan) -> int:
    """The sidecar's worker count: ProxyConfig ``concurrency`` from the annotation, else
    Istio's sidecar default 2 (0 means one per CPU, decided by the sidecar).

    Raises:
        ManifestError: the value is not an integer in 0..64.
    """
    value = proxy_config(pp).get("concurrency", ISTIO_SIDECAR_CONCURRENCY)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONCURRENCY:
        wl = pp.pod.workload
        raise ManifestError(
            wl.source,
            f"{wl.kind}/{wl.name}.spec.template.metadata.annotations.proxy.istio.io/config"
            ".concurrency", f"expected an integer 0..{MAX_CONCURRENCY}, got {value!r}")
    return value


def stats_inclusion_regexps(pp: PodPlan) -> list[str]:
    """The extra stats-inclusion patterns of a pod as full-match regexps (ENVOY.md §3).

    Istio (``I:pkg/bootstrap/config.go``) takes, per kind, the comma-separated
    ``sidecar.istio.io/statsInclusion{Prefixes,Suffixes,Regexps}`` annotation, or else (never
    merged) ``proxyStatsMatcher.inclusion{Prefixes,Suffixes,Regexps}`` of the
    ``proxy.istio.io/config`` annotation, and substitutes ``{pod_ip}``. The sidecar adds them to
    its bootstrap list; prefixes and suffixes are passed as ``<escaped>.*`` / ``.*<escaped>``.

    Raises:
        ManifestError: the proxy config annotation is not valid YAML or not a mapping.
    """
    wl = pp.pod.workload
    matcher = proxy_config(pp).get("proxyStatsMatcher") or {}
    out: list[str] = []
    for kind, wrap in (("Prefixes", "{}.*"), ("Suffixes", ".*{}"), ("Regexps", None)):
        anno = wl.annotations.get(f"sidecar.istio.io/statsInclusion{kind}", "")
        values = anno.split(",") if anno else [str(v) for v in matcher.get(f"inclusion{kind}") or []]
        for v in values:
            v = v.strip().replace("{pod_ip}", pp.ip)
            if v:
                out.append(wrap.format(re.escape(v)) if wrap else v)
    return out


def sidecar_config(plan: LabPlan, pp: PodPlan, access_log_path: str) -> dict[str, Any]:
    """The sidecar config of one meshed pod (CONTRACTS.md §1), JSON-ready."""
    topo = plan.topology
    domain = topo.cluster.cluster_domain
    wl = pp.pod.workload
    inbound = [{"port": p.port, "name": p.name, "protocol": p.protocol}
               for c in wl.containers for p in c.ports]
    services = []
    for svc in topo.services:
        services.append({
            "name": svc.name, "namespace": svc.namespace, "fqdn": svc.fqdn(domain),
            "cluster_ip": plan.cluster_ip(svc),
            "ports": [{"port": p.port, "name": p.name, "protocol": p.protocol,
                       "target_port": p.target_port} for p in svc.ports],
            "endpoints": [{"ip": ep.ip, "pod": ep.name, "node": ep.node.name}
                          for ep in plan.endpoints(svc, keep=pp.name)],
        })
    return {
        "pod": {"name": pp.name, "namespace": pp.pod.namespace, "ip": pp.ip, "workload": wl.name,
                "app": wl.labels.get("app", wl.labels.get("app.kubernetes.io/name", wl.name)),
                "version": wl.labels.get("version", "unknown"), "service_account": "default",
                "node": pp.node.name, "cluster_id": "Kubernetes"},
        "cluster_domain": domain,
        "ports": {"admin": 15000, "outbound": 15001, "inbound": 15006, "prometheus": 15090,
                  "agent": 15020},
        "inbound": inbound,
        "services": services,
        "connect_timeout_s": DEFAULT_CONNECT_TIMEOUT_S,
        "access_log_path": access_log_path,
        "access_log_encoding": "JSON",
        "stats_inclusion_regexps": stats_inclusion_regexps(pp),
        "tcp_stats_update_period_s": TCP_STATS_UPDATE_PERIOD_S,
        "policies": policies(plan, pp),
        "concurrency": proxy_concurrency(pp),
        "dns_capture": dns_capture(pp),
    }


# -- Istio config → sidecar policies (I:pilot/pkg/networking/core/cluster_traffic_policy.go) -----

def _keepalive_json(ka: TcpKeepalive) -> dict[str, int]:
    return {k: v for k, v in (("probes", ka.probes), ("time_s", ka.time_s),
                              ("interval_s", ka.interval_s)) if v is not None}


def _pool_json(pool: ConnectionPoolSpec) -> dict[str, Any]:
    """``applyConnectionPool``: a limit applies only when > 0, else Istio's 2^32-1 stays;
    the HTTP pool idle timeout falls back to ``tcp.idleTimeout``."""
    out: dict[str, Any] = {}
    cb = {key: v for key, v in (("max_connections", pool.max_connections),
                                ("max_pending_requests", pool.http1_max_pending_requests),
                                ("max_requests", pool.http2_max_requests),
                                ("max_retries", pool.max_retries)) if v > 0}
    if cb:
        out["circuit_breakers"] = cb
    if pool.connect_timeout_s is not None:
        out["connect_timeout_s"] = pool.connect_timeout_s
    if pool.tcp_keepalive is not None:  # applyTCPKeepalive: empty → SO_KEEPALIVE, OS values
        out["tcp_keepalive"] = _keepalive_json(pool.tcp_keepalive)
    idle = pool.http_idle_timeout_s if pool.http_idle_timeout_s is not None \
        else pool.tcp_idle_timeout_s
    if idle is not None:
        out["http_idle_timeout_s"] = idle
    if pool.tcp_idle_timeout_s is not None:  # TCP proxy idle_timeout (I:networkfilter.go)
        out["tcp_idle_timeout_s"] = pool.tcp_idle_timeout_s
    if pool.max_requests_per_connection > 0:
        out["max_requests_per_connection"] = pool.max_requests_per_connection
    return out


def _outlier_json(od: OutlierSpec) -> dict[str, Any]:
    """``applyOutlierDetection``: enforcing is 100 for a set threshold > 0 (0 disables it); an
    unset ``consecutive5xxErrors`` keeps Envoy's 5; ``minHealthPercent`` is always the
    ``healthy_panic_threshold`` (0 = no panic mode)."""
    out: dict[str, Any] = {"min_health_percent": od.min_health_percent}
    if od.consecutive_5xx_errors is not None:
        out["consecutive_5xx"] = od.consecutive_5xx_errors
    if od.consecutive_gateway_errors is not None:
        out["consecutive_gateway_failure"] = od.consecutive_gateway_errors
    if od.interval_s is not None:
        out["interval_s"] = od.interval_s
    if od.base_ejection_time_s is not None:
        out["base_ejection_time_s"] = od.base_ejection_time_s
    if od.max_ejection_percent > 0:
        out["max_ejection_percent"] = od.max_ejection_percent
    return out


def _dr_cluster(dr: DestinationRule, port: int) -> dict[str, Any]:
    """Policy of ``outbound|<port>||<host>``: a ``portLevelSettings`` entry for the port
    replaces the top-level policy wholesale, an omitted component falls back to the defaults,
    not to the top level (Istio ``mergeTrafficPolicy`` with ``hasPortLevel``, 1.22+).
    The pods behind the host get its connection pool on their inbound side
    (:func:`_inbound_clusters`)."""
    spec = dr.port_policies.get(port, dr.traffic_policy)
    pool, od = spec.connection_pool, spec.outlier_detection
    out = _pool_json(pool) if pool is not None else {}
    if od is not None:
        out["outlier_detection"] = _outlier_json(od)
    return out


def _inbound_clusters(plan: LabPlan, pp: PodPlan,
                      dr_by_host: dict[str, DestinationRule]) -> dict[str, dict[str, Any]]:
    """Policies of the pod's ``inbound|<port>||`` clusters from DestinationRules, as Istio's
    ``buildInboundCluster`` gives them (I:pilot/pkg/networking/core/cluster_builder.go): the
    first Service that selects the pod on a container port names the host; that host's
    DestinationRule (its ``portLevelSettings`` entry for the Service port, else the top level)
    gives the cluster its ``connectionPool`` and nothing else ("only connection pool settings
    make sense on the inbound path": outlier detection, load balancing and TLS are the
    client's). ``tcp.idleTimeout`` still backs the HTTP pool's idle timeout, but not the
    inbound TCP proxy's, which only the proxy's ``ISTIO_META_IDLE_TIMEOUT`` sets
    (I:networkfilter.go)."""
    topo = plan.topology
    domain = topo.cluster.cluster_domain
    own_ports = {p.port for c in pp.pod.workload.containers for p in c.ports}
    first: dict[int, tuple[Service, int]] = {}  # target port -> (first Service, its port)
    for svc in topo.services:
        if pp.name in {p.name for p in topo.endpoints(svc)}:
            for sp in svc.ports:
                if sp.target_port in own_ports:
                    first.setdefault(sp.target_port, (svc, sp.port))
    out: dict[str, dict[str, Any]] = {}
    for target, (svc, port) in first.items():
        dr = dr_by_host.get(svc.fqdn(domain))
        spec = None if dr is None else dr.port_policies.get(port, dr.traffic_policy)
        pool = None if spec is None else spec.connection_pool
        if pool is not None:
            policy = {k: v for k, v in _pool_json(pool).items() if k != "tcp_idle_timeout_s"}
            if policy:
                out[f"inbound|{target}||"] = policy
    return out


def _vs_routes(plan: LabPlan, svc_by_host: dict[str, Service]) -> dict[str, dict[str, Any]]:
    routes: dict[str, dict[str, Any]] = {}
    for vs in plan.topology.virtual_services:
        for r in vs.http:
            route: dict[str, Any] = {}
            if r.timeout_s is not None:
                route["timeout_s"] = r.timeout_s
            if r.retry_attempts is not None:  # ConvertPolicy: attempts 0 disables retries
                route["retry"] = {"num_retries": r.retry_attempts, "retry_on": r.retry_on,
                                  "per_try_timeout_s": r.per_try_timeout_s}
            fault: dict[str, Any] = {}
            if r.abort_status is not None:
                fault["abort"] = {"http_status": r.abort_status, "percent": r.abort_percent}
            if r.delay_s is not None:
                fault["delay"] = {"fixed_delay_s": r.delay_s, "percent": r.delay_percent}
            if fault:
                route["fault"] = fault
            svc = svc_by_host[r.host]
            for sp in svc.ports:  # HTTP routes only exist on HTTP ports
                if sp.protocol in ("http", "grpc") and r.port in (None, sp.port):
                    routes[f"outbound|{sp.port}||{r.host}"] = route
    return routes


def _merge_cluster_patch(cluster: dict[str, Any], options: list[dict[str, Any]],
                         keepalive: TcpKeepalive | None) -> None:
    if options:
        cluster["socket_options"] = [*cluster.get("socket_options", []), *options]
    if keepalive is not None:  # proto MERGE: set fields override
        cluster["tcp_keepalive"] = {**cluster.get("tcp_keepalive", {}),
                                    **_keepalive_json(keepalive)}


def policies(plan: LabPlan, pp: PodPlan) -> dict[str, Any]:
    """The ``policies`` object of one sidecar (shape: :mod:`meshlab.proxy.config.policy`).

    DestinationRules and VirtualServices apply to every sidecar (client side, every port of
    the host), a DestinationRule's connection pool also to the inbound clusters of the host's
    pods (:func:`_inbound_clusters`); EnvoyFilters only to the pods their ``workloadSelector``
    selects. Listener patches go to 15001 (``SIDECAR_OUTBOUND``) / 15006
    (``SIDECAR_INBOUND``), buffer-filter ``HTTP_FILTER`` patches to that listener's
    ``http_filters`` (with their HTTP port), cluster patches to the outbound clusters or the
    pod's ``inbound|<port>||`` clusters (merged over the DestinationRule's pool).
    """
    topo = plan.topology
    domain = topo.cluster.cluster_domain
    svc_by_host = {s.fqdn(domain): s for s in topo.services}
    clusters = _inbound_clusters(plan, pp, {dr.host: dr for dr in topo.destination_rules})
    for dr in topo.destination_rules:
        for sp in svc_by_host[dr.host].ports:
            clusters[f"outbound|{sp.port}||{dr.host}"] = _dr_cluster(dr, sp.port)
    outbound = [(f"outbound|{sp.port}||{h}", h, sp.port) for h, s in svc_by_host.items()
                for sp in s.ports] + [("PassthroughCluster", None, None)]
    inbound = [(f"inbound|{p.port}||", None, p.port) for c in pp.pod.workload.containers
               for p in c.ports] + [("InboundPassthroughCluster", None, None)]
    listeners: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ef in topo.envoy_filters:
        if not ef.selects(pp.pod.namespace, pp.pod.labels):
            continue
        for patch in ef.patches:
            contexts = ([patch.context] if patch.context != "ANY"
                        else ["SIDECAR_OUTBOUND", "SIDECAR_INBOUND"])
            opts = [{"level": o.level, "name": o.name, "int_value": o.int_value,
                     "state": o.state} for o in patch.socket_options]
            for ctx in contexts:
                port = CAPTURE_LISTENERS[ctx]
                if patch.apply_to == "HTTP_FILTER":  # port: the HTTP port, any listener's
                    listeners.setdefault(str(port), {}).setdefault("http_filters", []).append(
                        {"name": BUFFER_FILTER, "max_request_bytes": patch.max_request_bytes,
                         "port": patch.port})
                    continue
                if patch.apply_to == "LISTENER":
                    if patch.port in (None, port):
                        listeners.setdefault(str(port), {}).setdefault(
                            "socket_options", []).extend(opts)
                    continue
                for name, host, port in (outbound if ctx == "SIDECAR_OUTBOUND" else inbound):
                    if patch.service not in (None, host) or patch.port not in (None, port):
                        continue
                    _merge_cluster_patch(clusters.setdefault(name, {}), opts,
                                         patch.tcp_keepalive)
    out: dict[str, Any] = {"clusters": clusters, "routes": _vs_routes(plan, svc_by_host)}
    if listeners:
        out["listeners"] = listeners
    return out


def hosts_file(plan: LabPlan, pp: PodPlan) -> str:
    """``/etc/hosts`` for a pod, as the kubelet writes it (``managedHostsFileContent``):
    localhost and the pod's own names only. Service names resolve through the cluster DNS
    (:func:`resolv_conf`, :mod:`meshlab.envs.local.kube_dns`)."""
    domain = plan.topology.cluster.cluster_domain
    return "\n".join([
        "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pp.ip}\t{pp.name}.{pp.pod.workload.name}.{pp.pod.namespace}.svc.{domain} {pp.name}",
    ]) + "\n"


def resolv_conf(plan: LabPlan, pp: PodPlan) -> str:
    """``resolv.conf`` as the kubelet writes it for ``dnsPolicy: ClusterFirst``: the pod's
    search path (``<ns>.svc.<domain> svc.<domain> <domain>``), the kube-dns ClusterIP
    (10.96.0.10) and ``options ndots:5``."""
    domain = plan.topology.cluster.cluster_domain
    ns = pp.pod.namespace
    return (f"search {ns}.svc.{domain} svc.{domain} {domain}\n"
            f"nameserver {kube_dns.cluster_dns_ip(plan)}\noptions ndots:5\n")


def dump(cfg: dict[str, Any]) -> str:
    """Serialise a sidecar config."""
    return json.dumps(cfg, indent=1, sort_keys=False)
