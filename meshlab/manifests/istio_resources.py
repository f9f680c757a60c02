"""Istio traffic configuration kinds in a manifests folder: DestinationRule, VirtualService,
EnvoyFilter (``networking.istio.io``), parsed strictly into :mod:`meshlab.model` objects.

The manifest loader (:mod:`meshlab.manifests.loader`) checks every document against the
schemas here (an unknown field fails) and calls the ``parse_*`` functions; every other problem
also fails fast as ``<file>: <Kind>/<name>.<field>: <problem>``. What is accepted:

- **DestinationRule** (v1, v1beta1, v1alpha3): ``host``; ``trafficPolicy.connectionPool.tcp``
  (``maxConnections``, ``connectTimeout``, ``tcpKeepalive``, ``idleTimeout``) and ``.http``
  (``http1MaxPendingRequests``, ``http2MaxRequests``, ``maxRequestsPerConnection``,
  ``maxRetries``, ``idleTimeout``); ``outlierDetection`` (``consecutive5xxErrors``,
  ``consecutiveGatewayErrors``, ``interval``, ``baseEjectionTime``, ``maxEjectionPercent``,
  ``minHealthPercent``); ``portLevelSettings[]`` with ``port.number``. No subsets.
- **VirtualService** (same versions): ``hosts`` and one ``http[]`` entry without match
  conditions, routing to one ``destination`` (the VS host itself, optional ``port.number``),
  with ``timeout``, ``retries`` and ``fault.abort`` / ``fault.delay``.
- **EnvoyFilter** (v1alpha3): ``workloadSelector.labels`` and ``configPatches[]`` with
  ``applyTo: LISTENER|CLUSTER``, ``match.context``, ``patch.operation: MERGE`` and a value of
  listener ``socket_options``, cluster ``upstream_bind_config.socket_options`` or cluster
  ``upstream_connection_options.tcp_keepalive`` (Envoy field names).

EnvoyFilter parsing lives in :mod:`meshlab.manifests.istio_envoy_filter`, shared field readers
in :mod:`meshlab.manifests.istio_fields`, the :class:`~meshlab.manifests.document.Document` they
all take in :mod:`meshlab.manifests.document`. Durations use Istio's (Go) syntax: ``1.5s``,
``100ms``, ``1h30m``, ``0``. Short host names are resolved in the object's namespace
(``reviews`` → ``reviews.<ns>.svc.<domain>``), as Istio does.
"""

from __future__ import annotations

from typing import Any

from meshlab.manifests.document import Document
from meshlab.manifests.istio_envoy_filter import ENVOY_FILTER_SCHEMA
from meshlab.manifests.istio_fields import (
    opt,
    read_duration,
    read_host,
    read_int,
    read_keepalive,
)
from meshlab.model import (
    ConnectionPoolSpec,
    DestinationRule,
    HttpRouteSpec,
    OutlierSpec,
    Topology,
    TrafficPolicySpec,
    VirtualService,
)

ISTIO_KINDS = ("DestinationRule", "VirtualService", "EnvoyFilter")
API_VERSIONS = {
    "DestinationRule": ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                        "networking.istio.io/v1alpha3"),
    "VirtualService": ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                       "networking.istio.io/v1alpha3"),
    "EnvoyFilter": ("networking.istio.io/v1alpha3",),
}
_META = {"name": None, "namespace": None, "labels": None, "annotations": None}
_TCP = {"maxConnections": None, "connectTimeout": None, "idleTimeout": None,
        "tcpKeepalive": {"probes": None, "time": None, "interval": None}}
_HTTP = {"http1MaxPendingRequests": None, "http2MaxRequests": None,
         "maxRequestsPerConnection": None, "maxRetries": None, "idleTimeout": None}
_OUTLIER = {"consecutive5xxErrors": None, "consecutiveGatewayErrors": None, "interval": None,
            "baseEjectionTime": None, "maxEjectionPercent": None, "minHealthPercent": None}
_POLICY = {"connectionPool": {"tcp": _TCP, "http": _HTTP}, "outlierDetection": _OUTLIER}
_PCT = {"value": None}
_VS_HTTP = {"name": None, "timeout": None,
            "route": [{"destination": {"host": None, "port": {"number": None}}, "weight": None}],
            "retries": {"attempts": None, "perTryTimeout": None, "retryOn": None},
            "fault": {"abort": {"httpStatus": None, "percentage": _PCT},
                      "delay": {"fixedDelay": None, "percentage": _PCT}}}
#: Field schemas (same notation as the manifest loader's).
ISTIO_SCHEMAS: dict[str, dict[str, Any]] = {
    "DestinationRule": {"metadata": _META, "spec": {"host": None, "trafficPolicy": {
        **_POLICY, "portLevelSettings": [{"port": {"number": None}, **_POLICY}]}}},
    "VirtualService": {"metadata": _META, "spec": {"hosts": None, "http": [_VS_HTTP]}},
    "EnvoyFilter": ENVOY_FILTER_SCHEMA,
}

# -- DestinationRule -----------------------------------------------------------------------------

def _pool(doc: Document, where: str, node: dict[str, Any]) -> ConnectionPoolSpec:
    tcp, http = node.get("tcp") or {}, node.get("http") or {}
    t, h = f"{where}.tcp", f"{where}.http"
    kw: dict[str, Any] = {}
    if "maxConnections" in tcp:
        kw["max_connections"] = read_int(doc, f"{t}.maxConnections", tcp["maxConnections"],
                                     hi=2**31 - 1)
    for key, attr in (("http1MaxPendingRequests", "http1_max_pending_requests"),
                      ("http2MaxRequests", "http2_max_requests"),
                      ("maxRequestsPerConnection", "max_requests_per_connection"),
                      ("maxRetries", "max_retries")):
        if key in http:
            kw[attr] = read_int(doc, f"{h}.{key}", http[key], hi=2**31 - 1)
    if tcp.get("connectTimeout") is not None:
        kw["connect_timeout_s"] = read_duration(doc, f"{t}.connectTimeout", tcp["connectTimeout"])
    if tcp.get("idleTimeout") is not None:
        kw["tcp_idle_timeout_s"] = read_duration(doc, f"{t}.idleTimeout", tcp["idleTimeout"], min_s=0)
    if http.get("idleTimeout") is not None:
        kw["http_idle_timeout_s"] = read_duration(doc, f"{h}.idleTimeout", http["idleTimeout"], min_s=0)
    if tcp.get("tcpKeepalive") is not None:
        kw["tcp_keepalive"] = read_keepalive(doc, f"{t}.tcpKeepalive", tcp["tcpKeepalive"],
                                         ("probes", "time", "interval"), durations=True)
    return ConnectionPoolSpec(**kw)


def _outlier(doc: Document, where: str, node: dict[str, Any]) -> OutlierSpec:
    kw: dict[str, Any] = {}
    for key, attr in (("consecutive5xxErrors", "consecutive_5xx_errors"),
                      ("consecutiveGatewayErrors", "consecutive_gateway_errors")):
        if node.get(key) is not None:
            kw[attr] = read_int(doc, f"{where}.{key}", node[key])
    for key, attr in (("maxEjectionPercent", "max_ejection_percent"),
                      ("minHealthPercent", "min_health_percent")):
        if node.get(key) is not None:
            kw[attr] = read_int(doc, f"{where}.{key}", node[key], hi=100)
    for key, attr in (("interval", "interval_s"), ("baseEjectionTime", "base_ejection_time_s")):
        if node.get(key) is not None:
            kw[attr] = read_duration(doc, f"{where}.{key}", node[key])
    return OutlierSpec(**kw)


def _policy(doc: Document, where: str, node: dict[str, Any]) -> TrafficPolicySpec:
    pool = node.get("connectionPool")
    od = node.get("outlierDetection")
    return TrafficPolicySpec(
        connection_pool=_pool(doc, f"{where}.connectionPool", pool) if pool is not None else None,
        outlier_detection=_outlier(doc, f"{where}.outlierDetection", od) if od is not None
        else None)


def parse_destination_rule(doc: Document, namespace: str, domain: str) -> DestinationRule:
    """A validated :class:`DestinationRule` (host resolved to its FQDN).

    Raises:
        ManifestError: a bad host, duration, number or duplicate port.
    """
    host = read_host(doc, "spec.host", doc.get("spec.host"), namespace, domain)
    tp = doc.get("spec.trafficPolicy", {}) or {}
    ports: dict[int, TrafficPolicySpec] = {}
    for i, pls in enumerate(tp.get("portLevelSettings") or []):
        where = f"spec.trafficPolicy.portLevelSettings[{i}]"
        if opt(pls.get("port"), "number") is None:
            raise doc.fail(f"{where}.port.number", "missing required field")
        port = read_int(doc, f"{where}.port.number", pls["port"]["number"], 1, 65535)
        if port in ports:
            raise doc.fail(f"{where}.port.number", f"port {port} is listed twice")
        ports[port] = _policy(doc, where, pls)
    return DestinationRule(doc.name, namespace, host, _policy(doc, "spec.trafficPolicy", tp),
                           ports, str(doc.path))


# -- VirtualService ------------------------------------------------------------------------------

def _percent(doc: Document, where: str, node: dict[str, Any]) -> float:
    value = opt(node.get("percentage"), "value")
    if value is None:
        return 100.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise doc.fail(f"{where}.percentage.value", f"expected a number 0..100, got {value!r}")
    return float(value)


def _http_route(doc: Document, where: str, node: dict[str, Any], hosts: tuple[str, ...],
                namespace: str, domain: str) -> HttpRouteSpec:
    routes = node.get("route") or []
    if len(routes) != 1:
        raise doc.fail(f"{where}.route", f"exactly one route destination is supported, "
                                         f"got {len(routes)}")
    r = routes[0]
    if r.get("weight") not in (None, 100):
        raise doc.fail(f"{where}.route[0].weight", "weighted routing is not supported")
    dest = r.get("destination") or {}
    if "host" not in dest:
        raise doc.fail(f"{where}.route[0].destination.host", "missing required field")
    host = read_host(doc, f"{where}.route[0].destination.host", dest["host"], namespace, domain)
    if host not in hosts:
        raise doc.fail(f"{where}.route[0].destination.host", f"{host} is not one of the VS "
                       "hosts (routing to another host is not supported)")
    kw: dict[str, Any] = {"host": host}
    if opt(dest.get("port"), "number") is not None:
        kw["port"] = read_int(doc, f"{where}.route[0].destination.port.number",
                          dest["port"]["number"], 1, 65535)
    if node.get("timeout") is not None:
        kw["timeout_s"] = read_duration(doc, f"{where}.timeout", node["timeout"], min_s=0)
    retries = node.get("retries")
    if retries is not None:
        kw["retry_attempts"] = read_int(doc, f"{where}.retries.attempts", retries.get("attempts", 0),
                                    hi=2**31 - 1)
        retry_on = retries.get("retryOn") or ""
        if not isinstance(retry_on, str):
            raise doc.fail(f"{where}.retries.retryOn", f"expected a string, got {retry_on!r}")
        kw["retry_on"] = retry_on
        if retries.get("perTryTimeout") is not None:
            kw["per_try_timeout_s"] = read_duration(doc, f"{where}.retries.perTryTimeout",
                                           retries["perTryTimeout"])
    fault = node.get("fault") or {}
    if fault.get("abort") is not None:
        a, aw = fault["abort"], f"{where}.fault.abort"
        if "httpStatus" not in a:
            raise doc.fail(f"{aw}.httpStatus", "missing required field")
        kw["abort_status"] = read_int(doc, f"{aw}.httpStatus", a["httpStatus"], 200, 599)
        kw["abort_percent"] = _percent(doc, aw, a)
    if fault.get("delay") is not None:
        d, dw = fault["delay"], f"{where}.fault.delay"
        if "fixedDelay" not in d:
            raise doc.fail(f"{dw}.fixedDelay", "missing required field")
        kw["delay_s"] = read_duration(doc, f"{dw}.fixedDelay", d["fixedDelay"])
        kw["delay_percent"] = _percent(doc, dw, d)
    return HttpRouteSpec(**kw)


def parse_virtual_service(doc: Document, namespace: str, domain: str) -> VirtualService:
    """A validated :class:`VirtualService` (hosts resolved to FQDNs).

    Raises:
        ManifestError: bad hosts, more than one http entry or destination, bad durations.
    """
    raw_hosts = doc.get("spec.hosts", kind=list)
    if not raw_hosts:
        raise doc.fail("spec.hosts", "at least one host is required")
    hosts = tuple(read_host(doc, f"spec.hosts[{i}]", h, namespace, domain)
                  for i, h in enumerate(raw_hosts))
    http = doc.get("spec.http", [], kind=list) or []
    if len(http) > 1:
        raise doc.fail("spec.http", "only one http route is supported (no match conditions)")
    routes = tuple(_http_route(doc, f"spec.http[{i}]", h, hosts, namespace, domain)
                   for i, h in enumerate(http))
    return VirtualService(doc.name, namespace, hosts, routes, str(doc.path))

def check_references(docs: list[Document], topo: Topology) -> None:
    """Every host and port the Istio objects name must be a Service (port) of the manifests.

    Args:
        docs: the Istio documents, in the order their objects were appended to ``topo``.
        topo: the topology holding the parsed objects.

    Raises:
        ManifestError: the first unknown host or port (typos fail instead of doing nothing).
    """
    domain = topo.cluster.cluster_domain
    ports = {s.fqdn(domain): {p.port for p in s.ports} for s in topo.services}
    by_kind: dict[str, list[Document]] = {k: [d for d in docs if d.kind == k] for k in ISTIO_KINDS}

    def known(doc: Document, field: str, host: str, port: int | None = None) -> None:
        if host not in ports:
            raise doc.fail(field, f"no Service {host} in the manifests")
        if port is not None and port not in ports[host]:
            raise doc.fail(field, f"Service {host} has no port {port}")

    seen: dict[str, str] = {}
    for doc, dr in zip(by_kind["DestinationRule"], topo.destination_rules):
        known(doc, "spec.host", dr.host)
        if dr.host in seen:
            raise doc.fail("spec.host", f"{dr.host} already has DestinationRule {seen[dr.host]} "
                                        "(merging several is not supported)")
        seen[dr.host] = dr.name
        for port in dr.port_policies:
            known(doc, "spec.trafficPolicy.portLevelSettings.port.number", dr.host, port)
    seen = {}
    for doc, vs in zip(by_kind["VirtualService"], topo.virtual_services):
        for i, host in enumerate(vs.hosts):
            known(doc, f"spec.hosts[{i}]", host)
            if host in seen:
                raise doc.fail(f"spec.hosts[{i}]", f"{host} already has VirtualService "
                                                   f"{seen[host]} (merging is not supported)")
            seen[host] = vs.name
        for i, r in enumerate(vs.http):
            known(doc, f"spec.http[{i}].route[0].destination.port.number", r.host, r.port)
    for doc, ef in zip(by_kind["EnvoyFilter"], topo.envoy_filters):
        for i, p in enumerate(ef.patches):
            if p.service is not None:
                known(doc, f"spec.configPatches[{i}].match.cluster.service", p.service)
