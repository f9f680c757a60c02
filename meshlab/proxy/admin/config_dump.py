"""Admin ``GET /config_dump``: the sidecar config as Envoy ``admin.v3.ConfigDump`` JSON
(sans-IO; ENVOY.md §5, §7, §8).

``configs`` holds, in Envoy's order, the Bootstrap (node, static listeners/clusters, Istio's
``stats_config``), Clusters, Listeners and Routes dumps built from :class:`SidecarConfig`
including its DestinationRule/VirtualService policies; ``?include_eds`` adds Endpoints.
``?resource=<field>`` returns only the items of that repeated field (e.g.
``dynamic_active_clusters``), each typed like ``…ClustersConfigDump.DynamicCluster``;
``?name_regex=`` keeps resources whose name matches (search). Unknown ``resource`` → 404.
"""

from __future__ import annotations

import json
import re
from typing import Any

from meshlab.proxy.admin.clusters import ClusterInfo, cluster_inventory, listener_inventory
from meshlab.proxy.config.policy import DEFAULT_ROUTE_POLICY
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.http.retry import settings_from_route
from meshlab.proxy.stats.render import stats_tags
from meshlab.proxy.stats.store import StatsMatcher

T = "type.googleapis.com/envoy."
LAST_UPDATED = "1970-01-01T00:00:00Z"
VERSION = "meshlab-local"
#: repeated field → (dump type, item type suffix, path of the name inside an item)
RESOURCES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "static_clusters": ("ClustersConfigDump", "StaticCluster", ("cluster", "name")),
    "dynamic_active_clusters": ("ClustersConfigDump", "DynamicCluster", ("cluster", "name")),
    "static_listeners": ("ListenersConfigDump", "StaticListener", ("listener", "name")),
    "dynamic_listeners": ("ListenersConfigDump", "DynamicListener", ("name",)),
    "dynamic_route_configs": ("RoutesConfigDump", "DynamicRouteConfig", ("route_config", "name")),
    "dynamic_endpoint_configs": ("EndpointsConfigDump", "DynamicEndpointConfig",
                                 ("endpoint_config", "cluster_name")),
}


def _dur(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _addr(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def node(config: SidecarConfig) -> dict[str, Any]:
    """Istio's node: id ``sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>``, cluster, metadata."""
    pod = config.pod
    return {"id": f"sidecar~{pod.ip}~{pod.name}.{pod.namespace}~{pod.namespace}.svc."
                  f"{config.cluster_domain}",
            "cluster": f"{pod.app if pod.app != 'unknown' else pod.workload}.{pod.namespace}",
            "metadata": {"NAMESPACE": pod.namespace, "NAME": pod.name, "WORKLOAD_NAME": pod.workload,
                         "INSTANCE_IPS": pod.ip, "CLUSTER_ID": pod.cluster_id,
                         "LABELS": {"app": pod.app, "version": pod.version},
                         "SERVICE_ACCOUNT": pod.service_account},
            "user_agent_name": "envoy"}


def _cluster(info: ClusterInfo, config: SidecarConfig) -> dict[str, Any]:
    pol = info.policy
    doc: dict[str, Any] = {"@type": T + "config.cluster.v3.Cluster", "name": info.name,
                           "type": info.kind,
                           "connect_timeout": _dur(pol.connect_timeout_s or config.connect_timeout_s)}
    if info.kind == "EDS":
        doc["eds_cluster_config"] = {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                                     "service_name": info.name}
        doc["lb_policy"] = "LEAST_REQUEST"
    elif info.kind == "ORIGINAL_DST":
        doc["lb_policy"] = "CLUSTER_PROVIDED"
    else:
        doc["load_assignment"] = _endpoints(info)
    if info.added_via_api:
        cb = pol.circuit_breakers
        doc["circuit_breakers"] = {"thresholds": [{
            "max_connections": cb.max_connections, "max_pending_requests": cb.max_pending_requests,
            "max_requests": cb.max_requests, "max_retries": cb.max_retries,
            "track_remaining": True}]}
        doc["alt_stat_name"] = info.name + ";" if config.stats_delimited_tags else info.name
        doc["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {
                    "idle_timeout": _dur(pol.http_idle_timeout_s),
                    **({"max_requests_per_connection": pol.max_requests_per_connection}
                       if pol.max_requests_per_connection else {})},
                "explicit_http_config": {"http_protocol_options": {}}}}
    od = pol.outlier_detection
    if od is not None:
        doc["outlier_detection"] = {
            "consecutive_5xx": od.consecutive_5xx, "interval": _dur(od.interval_s),
            "base_ejection_time": _dur(od.base_ejection_time_s),
            "max_ejection_percent": od.max_ejection_percent,
            "enforcing_consecutive_5xx": 100 if od.consecutive_5xx else 0,
            "consecutive_gateway_failure": od.consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure": 100 if od.consecutive_gateway_failure else 0,
            "enforcing_success_rate": 0}
        doc["common_lb_config"] = {"healthy_panic_threshold": {"value": od.min_health_percent}}
    if pol.tcp_keepalive is not None:
        ka = pol.tcp_keepalive
        doc["upstream_connection_options"] = {"tcp_keepalive": {
            k: v for k, v in (("keepalive_probes", ka.probes), ("keepalive_time", ka.time_s),
                              ("keepalive_interval", ka.interval_s)) if v is not None}}
    if info.bind_ip or pol.socket_options:
        bind: dict[str, Any] = {"source_address": {"address": info.bind_ip or "0.0.0.0",
                                                   "port_value": 0}}
        if pol.socket_options:
            bind["socket_options"] = [_sockopt(o) for o in pol.socket_options]
        doc["upstream_bind_config"] = bind
    if info.service is not None:
        fqdn, name, ns, _port = info.service
        doc["metadata"] = {"filter_metadata": {"istio": {
            "services": [{"host": fqdn, "name": name, "namespace": ns}]}}}
    return doc


def _sockopt(o: Any) -> dict[str, Any]:
    return {"level": str(o.level), "name": str(o.name), "int_value": str(o.int_value),
            "state": o.state}


def _endpoints(info: ClusterInfo) -> dict[str, Any]:
    lb = []
    for h in info.hosts:
        address = {"pipe": {"path": h}} if isinstance(h, str) else _addr(*h)
        lb.append({"endpoint": {"address": address}, "health_status": "HEALTHY",
                   "load_balancing_weight": 1})
    return {"cluster_name": info.name, "endpoints": [{"locality": {}, "lb_endpoints": lb}]}


def _route_config(port: int, clusters: list[ClusterInfo], config: SidecarConfig) -> dict[str, Any]:
    vhosts = []
    for info in clusters:
        assert info.service is not None
        fqdn, name, ns, _ = info.service
        rp = config.policies.routes.get(info.name, DEFAULT_ROUTE_POLICY)
        route: dict[str, Any] = {"cluster": info.name,
                                 "timeout": _dur(rp.timeout_s or config.route_timeout_s or 0),
                                 "max_grpc_timeout": "0s"}
        retry = (settings_from_route(rp.retry) if rp.retry is not None
                 else config.outbound_retry)
        if retry is not None and retry.num_retries:
            route["retry_policy"] = {
                "retry_on": ",".join(sorted(retry.retry_on)), "num_retries": retry.num_retries,
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
                "host_selection_retry_max_attempts": "5"}
            if retry.retriable_status_codes:  # none by default (Istio 1.24+, ENVOY.md §8)
                route["retry_policy"]["retriable_status_codes"] = sorted(
                    retry.retriable_status_codes)
        r: dict[str, Any] = {"name": "default", "match": {"prefix": "/"}, "route": route,
                             "decorator": {"operation": f"{fqdn}:{port}/*"}}
        fault: dict[str, Any] = {}
        if rp.abort is not None:
            fault["abort"] = {"http_status": rp.abort.http_status, "percentage": {
                "numerator": int(rp.abort.percent * 10000), "denominator": "MILLION"}}
        if rp.delay is not None:
            fault["delay"] = {"fixed_delay": _dur(rp.delay.fixed_delay_s), "percentage": {
                "numerator": int(rp.delay.percent * 10000), "denominator": "MILLION"}}
        if fault:
            r["typed_per_filter_config"] = {"envoy.filters.http.fault": {
                "@type": T + "extensions.filters.http.fault.v3.HTTPFault", **fault}}
        vhosts.append({"name": f"{fqdn}:{port}",
                       "domains": [fqdn, f"{name}.{ns}.svc", f"{name}.{ns}", name],
                       "routes": [r], "include_request_attempt_count": True})
    vhosts.append({"name": "allow_any", "domains": ["*"], "routes": [{
        "name": "allow_any", "match": {"prefix": "/"},
        "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}],
        "include_request_attempt_count": True})
    return {"@type": T + "config.route.v3.RouteConfiguration", "name": str(port),
            "virtual_hosts": vhosts, "validate_clusters": False,
            "ignore_port_in_host_matching": True}


def _bootstrap(config: SidecarConfig, matcher: StatsMatcher) -> dict[str, Any]:
    patterns = ([{"prefix": p} for p in matcher.prefixes] + [{"suffix": s} for s in matcher.suffixes]
                + [{"safe_regex": {"regex": r}} for r in (r"vhost\..*\.route\..*", *matcher.regexps)])
    p = config.ports
    return {"bootstrap": {
        "node": node(config),
        "static_resources": {"clusters": [_cluster(c, config) for c in cluster_inventory(config)
                                          if not c.added_via_api]},
        "dynamic_resources": {"lds_config": {"ads": {}, "resource_api_version": "V3"},
                              "cds_config": {"ads": {}, "resource_api_version": "V3"},
                              "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {
                                                 "cluster_name": "xds-grpc"}}]}},
        "stats_config": {"stats_tags": [{"tag_name": n, "regex": rx} for n, rx in
                                        stats_tags(config.stats_delimited_tags)],
                         "use_all_default_tags": False,
                         "stats_matcher": {"inclusion_list": {"patterns": patterns}}},
        "stats_flush_interval": _dur(config.stats_flush_interval_s),
        "admin": {"address": _addr("127.0.0.1", p.admin),
                  "profile_path": "/var/lib/istio/data/envoy.prof"}},
        "last_updated": LAST_UPDATED}


def config_dump(config: SidecarConfig, matcher: StatsMatcher, *, resource: str | None = None,
                name_regex: str | None = None, include_eds: bool = False) -> tuple[int, str]:
    """``GET /config_dump``: ``(status, JSON body)``.

    Raises:
        re.error: ``name_regex`` does not compile (the admin maps it to 400).
    """
    infos = cluster_inventory(config)
    fields: dict[str, list[dict[str, Any]]] = {
        "static_clusters": [{"cluster": _cluster(c, config), "last_updated": LAST_UPDATED}
                            for c in infos if not c.added_via_api],
        "dynamic_active_clusters": [{"version_info": VERSION, "cluster": _cluster(c, config),
                                     "last_updated": LAST_UPDATED}
                                    for c in infos if c.added_via_api],
        "dynamic_listeners": [{"name": li.name, "active_state": {
            "version_info": VERSION, "last_updated": LAST_UPDATED,
            "listener": {"@type": T + "config.listener.v3.Listener", "name": li.name,
                         "address": _addr(*li.address), "traffic_direction": li.direction,
                         **({} if li.bind else {"bind_to_port": False}),
                         **({"use_original_dst": True} if li.name.startswith("virtual") else {}),
                         **({"socket_options": [_sockopt(o) for o in
                                                config.policies.listener_socket_options]}
                            if config.policies.listener_socket_options else {})}}}
            for li in listener_inventory(config)],
        "dynamic_route_configs": [],
    }
    by_port: dict[int, list[ClusterInfo]] = {}
    for c in infos:
        if c.service is not None and c.kind == "EDS" and _is_http(config, c):
            by_port.setdefault(c.service[3], []).append(c)
    fields["dynamic_route_configs"] = [
        {"version_info": VERSION, "route_config": _route_config(port, cs, config),
         "last_updated": LAST_UPDATED} for port, cs in sorted(by_port.items())]
    if include_eds or resource == "dynamic_endpoint_configs":
        fields["dynamic_endpoint_configs"] = [{"endpoint_config": {
            "@type": T + "config.endpoint.v3.ClusterLoadAssignment", **_endpoints(c)}}
            for c in infos if c.kind == "EDS"]
    rx = re.compile(name_regex) if name_regex else None
    for key, items in fields.items():
        path = RESOURCES[key][2]
        fields[key] = [i for i in items if rx is None or rx.search(_name(i, path))]
    if resource is not None:
        if resource not in fields:
            return 404, json.dumps({"error": f"resource '{resource}' is not a repeated field "
                                             f"of any config dump"})
        kind, item, _ = RESOURCES[resource]
        return 200, json.dumps({"configs": [{"@type": f"{T}admin.v3.{kind}.{item}", **i}
                                            for i in fields[resource]]}, indent=1)
    configs = [{"@type": T + "admin.v3.BootstrapConfigDump", **_bootstrap(config, matcher)}]
    for kind, keys in (("ClustersConfigDump", ("static_clusters", "dynamic_active_clusters")),
                       ("ListenersConfigDump", ("dynamic_listeners",)),
                       ("RoutesConfigDump", ("dynamic_route_configs",)),
                       ("EndpointsConfigDump", ("dynamic_endpoint_configs",))):
        if all(k in fields for k in keys):
            configs.append({"@type": f"{T}admin.v3.{kind}", "version_info": VERSION,
                            **{k: fields[k] for k in keys}})
    configs.append({"@type": T + "admin.v3.SecretsConfigDump"})
    return 200, json.dumps({"configs": configs}, indent=1)


def _is_http(config: SidecarConfig, info: ClusterInfo) -> bool:
    assert info.service is not None
    for svc in config.services:
        if svc.fqdn == info.service[0]:
            return any(sp.port == info.service[3] and sp.protocol == "http" for sp in svc.ports)
    return False


def _name(item: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = item
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return value if isinstance(value, str) else ""
