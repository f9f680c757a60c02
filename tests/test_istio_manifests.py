"""Istio kinds in a manifests folder: strict schemas (errors name file and field), Istio's
mapping rules into sidecar policies, and the example manifests."""

import shutil
from pathlib import Path

import pytest

from meshlab.envs.local import istiod
from meshlab.envs.local.lab import DEFAULT_MANIFESTS
from meshlab.envs.local.plan import make_plan
from meshlab.errors import ManifestError
from meshlab.manifests.istio_fields import parse_duration_s, resolve_host
from meshlab.manifests.loader import load_topology
from meshlab.proxy.config.policy import ISTIO_UNLIMITED, parse_policies

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "istio"
L2 = "fortio-server-l2.mark.svc.cluster.local"


def _lab(tmp_path: Path, *docs: str, examples: bool = False) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(DEFAULT_MANIFESTS, dst)
    if examples:
        for f in EXAMPLES.glob("*.yaml"):
            shutil.copy(f, dst / f.name)
    for i, doc in enumerate(docs):
        (dst / f"zz-istio-{i}.yaml").write_text(doc)
    return dst


def _policies(folder: Path, pod: str) -> dict:
    plan = make_plan(load_topology(folder), "t")
    return istiod.policies(plan, plan.pods[pod])


DR = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: l2, namespace: mark}
spec:
  host: fortio-server-l2
  trafficPolicy:
%s
"""
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v, namespace: mark}
spec:
  hosts: [fortio-server]
  http:
"""


@pytest.mark.parametrize("text,seconds", [("1.5s", 1.5), ("100ms", 0.1), ("1h", 3600),
                                          ("1m30s", 90), ("0", 0), ("250us", 0.00025)])
def test_durations_use_istio_go_syntax(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1.5", "-1s", "s", "1 s", "1d", "", 5])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_short_hosts_resolve_in_the_object_namespace():
    assert resolve_host("reviews", "bookinfo", "cluster.local") == \
        "reviews.bookinfo.svc.cluster.local"
    assert resolve_host("reviews.other.svc.cluster.local", "x", "c") == \
        "reviews.other.svc.cluster.local"
    for bad in ("*.mark.svc.cluster.local", "Bad_Host", ""):
        with pytest.raises(ValueError):
            resolve_host(bad, "ns", "cluster.local")


def test_examples_load_and_translate(tmp_path):
    folder = _lab(tmp_path, examples=True)
    topo = load_topology(folder)
    assert [d.host for d in topo.destination_rules] == [L2]
    assert [v.hosts for v in topo.virtual_services] == [(L2,)]
    server = _policies(folder, "fortio-server-0")
    c8080 = server["clusters"][f"outbound|8080||{L2}"]
    assert c8080["circuit_breakers"] == {"max_connections": 100, "max_pending_requests": 64,
                                         "max_retries": 3}
    assert c8080["connect_timeout_s"] == 2.0
    assert c8080["tcp_keepalive"] == {"probes": 3, "time_s": 10, "interval_s": 5}
    assert c8080["outlier_detection"] == {"consecutive_5xx": 5, "interval_s": 5.0,
                                          "base_ejection_time_s": 30.0,
                                          "max_ejection_percent": 50, "min_health_percent": 0}
    # the EnvoyFilter selects app=fortio-server only: TCP_USER_TIMEOUT on its outbound clusters
    assert {"level": 6, "name": 18, "int_value": 10000, "state": "STATE_PREBIND"} in \
        c8080["socket_options"]
    assert server["listeners"]["15006"]["socket_options"][0]["state"] == "STATE_LISTENING"
    # portLevelSettings replace the whole policy of their port
    assert server["clusters"][f"outbound|8079||{L2}"]["circuit_breakers"] == \
        {"max_pending_requests": 8}
    assert "outlier_detection" not in server["clusters"][f"outbound|8079||{L2}"]
    route = server["routes"][f"outbound|8080||{L2}"]
    assert route == {"timeout_s": 6.0, "retry": {"num_retries": 2, "per_try_timeout_s": 3.0,
                                                 "retry_on": "connect-failure,reset,503"}}
    l2 = _policies(folder, "fortio-server-l2-0")
    # the buffer-filter EnvoyFilter selects app=fortio-server-l2: its inbound port 8080 only
    assert l2["listeners"] == {"15006": {"http_filters": [
        {"name": "envoy.filters.http.buffer", "max_request_bytes": 1048576, "port": 8080}]}}
    assert parse_policies(l2).max_request_bytes(15006, 8080) == 1048576
    assert parse_policies(l2).max_request_bytes(15006, 8079) is None
    assert parse_policies(l2).max_request_bytes(15001, 8080) is None
    assert parse_policies(server).max_request_bytes(15006, 8080) is None
    assert "socket_options" not in l2["clusters"][f"outbound|8080||{L2}"]
    # both sidecars accept what istiod wrote
    for pol in (server, l2):
        parsed = parse_policies(pol)
        assert parsed.cluster(f"outbound|8080||{L2}").circuit_breakers.max_requests == \
            ISTIO_UNLIMITED
    assert parse_policies(server).listener_options(15006)[0].int_value == 10000
    cfg = istiod.sidecar_config(make_plan(load_topology(folder), "t"),
                                make_plan(load_topology(folder), "t").pods["fortio-server-0"],
                                "/tmp/x.log")
    assert cfg["policies"] == server


def test_istio_mapping_rules(tmp_path):
    """cluster_traffic_policy.go: only limits > 0 apply; tcp.idleTimeout backs the HTTP pool
    idle timeout; consecutive errors 0 disables the detector; minHealthPercent always set."""
    body = """    connectionPool:
      tcp: {maxConnections: 0, idleTimeout: 90s, tcpKeepalive: {}}
      http: {http2MaxRequests: 7, maxRequestsPerConnection: 3}
    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, minHealthPercent: 30}
"""
    c = _policies(_lab(tmp_path, DR % body), "fortio-server-0")["clusters"][f"outbound|8070||{L2}"]
    assert c["circuit_breakers"] == {"max_requests": 7}
    assert c["http_idle_timeout_s"] == 90.0 and c["tcp_idle_timeout_s"] == 90.0
    assert c["tcp_keepalive"] == {}  # SO_KEEPALIVE with the OS values
    assert c["max_requests_per_connection"] == 3
    assert c["outlier_detection"] == {"consecutive_5xx": 0, "consecutive_gateway_failure": 2,
                                      "min_health_percent": 30}
    pol = parse_policies({"clusters": {"x": c}}).cluster("x")
    assert pol.circuit_breakers.max_connections == ISTIO_UNLIMITED
    assert pol.outlier_detection is not None and pol.outlier_detection.max_ejection_percent == 10


def test_destination_rule_pool_reaches_the_hosts_inbound_clusters(tmp_path):
    """Istio buildInboundCluster: the pods behind the host get the connection pool (port-level
    settings by Service port) on their inbound clusters, without outlier detection and without
    the TCP proxy idle timeout; other pods get nothing; an EnvoyFilter merges over it."""
    body = """    connectionPool:
      tcp: {maxConnections: 9, idleTimeout: 20s}
      http: {maxRequestsPerConnection: 4}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 8079}
      outlierDetection: {consecutive5xxErrors: 1}
"""
    folder = _lab(tmp_path, DR % body, EF)
    l2 = _policies(folder, "fortio-server-l2-0")["clusters"]
    assert l2["inbound|8070||"] == {"circuit_breakers": {"max_connections": 9},
                                    "http_idle_timeout_s": 20.0,
                                    "max_requests_per_connection": 4}
    assert l2["inbound|8080||"] == {**l2["inbound|8070||"], "tcp_keepalive": {"probes": 2,
                                                                              "time_s": 30}}
    assert "inbound|8079||" not in l2  # its port-level entry has no connection pool
    assert l2[f"outbound|8070||{L2}"]["tcp_idle_timeout_s"] == 20.0  # the client side keeps it
    l1 = _policies(folder, "fortio-server-0")["clusters"]
    assert l1["inbound|8080||"] == {"tcp_keepalive": {"probes": 2, "time_s": 30}}
    assert "inbound|8070||" not in l1
    pol = parse_policies({"clusters": l2}).cluster("inbound|8070||")
    assert pol.circuit_breakers.max_connections == 9 and pol.outlier_detection is None
    assert pol.http_idle_timeout_s == 20.0 and pol.tcp_idle_timeout_s == 3600.0


def test_virtual_service_fault_and_port_scope(tmp_path):
    vs = VS + """  - route: [{destination: {host: fortio-server}}]
    retries: {attempts: 0}
    fault:
      abort: {httpStatus: 503, percentage: {value: 25}}
      delay: {fixedDelay: 200ms}
"""
    routes = _policies(_lab(tmp_path, vs), "fortio-server-l2-0")["routes"]
    fqdn = "fortio-server.mark.svc.cluster.local"
    # every HTTP port of the host (grpc included), attempts 0 = no retries
    assert set(routes) == {f"outbound|{p}||{fqdn}" for p in (8080, 8070, 8079)}
    r = routes[f"outbound|8080||{fqdn}"]
    assert r["retry"]["num_retries"] == 0
    assert r["fault"] == {"abort": {"http_status": 503, "percent": 25.0},
                          "delay": {"fixed_delay_s": 0.2, "percent": 100.0}}
    assert parse_policies({"routes": routes}).route(f"outbound|8070||{fqdn}").abort.percent == 25


EF = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ka, namespace: mark}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_INBOUND, cluster: {portNumber: 8080}}
    patch:
      operation: MERGE
      value:
        upstream_connection_options:
          tcp_keepalive: {keepalive_time: 30, keepalive_probes: 2}
  - applyTo: LISTENER
    match: {context: ANY}
    patch:
      operation: MERGE
      value:
        socket_options: [{level: 6, name: 18, int_value: "5000", state: STATE_LISTENING}]
"""


def test_envoy_filter_without_selector_applies_to_the_namespace(tmp_path):
    folder = _lab(tmp_path, EF)
    for pod in ("fortio-server-0", "fortio-server-l2-0"):
        pol = _policies(folder, pod)
        assert pol["clusters"] == {"inbound|8080||": {"tcp_keepalive": {"probes": 2,
                                                                        "time_s": 30}}}
        assert set(pol["listeners"]) == {"15001", "15006"}
        assert pol["listeners"]["15001"]["socket_options"][0]["int_value"] == 5000


BUF = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: cap, namespace: mark}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: ANY
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.buffer
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
          max_request_bytes: 1024
"""


def test_buffer_filter_reaches_both_listeners_of_every_pod(tmp_path):
    """No workloadSelector and context ANY: every sidecar of the namespace, outbound and
    inbound, every HTTP port; the sidecars accept the result."""
    folder = _lab(tmp_path, BUF)
    for pod in ("fortio-server-0", "fortio-server-l2-0"):
        pol = _policies(folder, pod)
        entry = {"name": "envoy.filters.http.buffer", "max_request_bytes": 1024, "port": None}
        assert pol["listeners"] == {"15001": {"http_filters": [entry]},
                                    "15006": {"http_filters": [entry]}}
        parsed = parse_policies(pol)
        assert [parsed.max_request_bytes(lst, port) for lst, port in
                ((15001, 8080), (15006, 8079))] == [1024, 1024]


def _buf(old: str, new: str, field: str, problem: str) -> tuple[str, str, str]:
    """A bad variant of :data:`BUF`: the document, the field its error names, the problem."""
    return BUF.replace(old, new), f"EnvoyFilter/cap.spec.configPatches[0].{field}", problem


def _field_error(tmp_path, doc: str) -> str:
    folder = _lab(tmp_path, doc)
    with pytest.raises(ManifestError) as err:
        load_topology(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(folder / "zz-istio-0.yaml"))
    return msg


@pytest.mark.parametrize("doc,field,problem", [
    (DR % "    connectionPool: {tcp: {connectTimeout: 1.5}}",
     "DestinationRule/l2.spec.trafficPolicy.connectionPool.tcp.connectTimeout", "duration"),
    (DR % "    connectionPool: {tcp: {connectTimeout: 0.5ms}}",
     "DestinationRule/l2.spec.trafficPolicy.connectionPool.tcp.connectTimeout", "at least 1ms"),
    (DR % "    connectionPool: {tcp: {maxConnection: 3}}",
     "DestinationRule/l2.spec.trafficPolicy.connectionPool.tcp.maxConnection", "unsupported"),
    (DR % "    outlierDetection: {maxEjectionPercent: 150}",
     "DestinationRule/l2.spec.trafficPolicy.outlierDetection.maxEjectionPercent", "0..100"),
    (DR % "    loadBalancer: {simple: RANDOM}",
     "DestinationRule/l2.spec.trafficPolicy.loadBalancer", "unsupported"),
    (DR % "    portLevelSettings: [{port: {number: 9999}, connectionPool: {}}]",
     "DestinationRule/l2.spec.trafficPolicy.portLevelSettings.port.number", "no port 9999"),
    ((DR % "    {}").replace("host: fortio-server-l2", "host: nope"),
     "DestinationRule/l2.spec.host", "no Service nope.mark.svc.cluster.local"),
    ((DR % "    {}").replace("host: fortio-server-l2", "host: '*.mark.svc.cluster.local'"),
     "DestinationRule/l2.spec.host", "wildcard"),
    ((DR % "    {}").replace("v1beta1", "v2"), "DestinationRule/l2.apiVersion", "expected one of"),
    (EF.replace("operation: MERGE", "operation: ADD", 1),
     "EnvoyFilter/ka.spec.configPatches[0].patch.operation", "only MERGE"),
    (EF.replace("applyTo: CLUSTER", "applyTo: ROUTE_CONFIGURATION"),
     "EnvoyFilter/ka.spec.configPatches[0].applyTo", "LISTENER, CLUSTER and HTTP_FILTER"),
    (EF.replace("STATE_LISTENING", "STATE_LATER"),
     "EnvoyFilter/ka.spec.configPatches[1].patch.value.socket_options[0].state", "STATE_"),
    (EF.replace("{context: ANY}", "{context: GATEWAY}"),
     "EnvoyFilter/ka.spec.configPatches[1].match.context", "SIDECAR_INBOUND"),
    (EF.replace("upstream_connection_options:\n          tcp_keepalive: {keepalive_time: 30,"
                " keepalive_probes: 2}", "socket_options: [{level: 6, name: 18, int_value: 1}]"),
     "EnvoyFilter/ka.spec.configPatches[0].patch.value.socket_options", "upstream_bind_config"),
    (EF.replace("{context: ANY}", "{context: ANY, listener: {portNumber: 8080}}"),
     "EnvoyFilter/ka.spec.configPatches[1].match.listener.portNumber", "15001"),
    *(_buf(old, new, field, problem) for old, new, field, problem in (
        ("INSERT_BEFORE", "INSERT_AFTER", "patch.operation", "INSERT_BEFORE"),
        ("name: envoy.filters.http.buffer", "name: envoy.filters.http.lua", "patch.value.name",
         "only envoy.filters.http.buffer"),
        ("max_request_bytes: 1024", "max_request_bytes: 0",
         "patch.value.typed_config.max_request_bytes", "1.."),
        ("max_request_bytes: 1024", "max_buffer: 1024", "patch.value.typed_config.max_buffer",
         "unsupported"),
        ("buffer.v3.Buffer", "buffer.v2.Buffer", "patch.value.typed_config.@type",
         "buffer.v3.Buffer"),
        ("name: envoy.filters.http.router", "name: envoy.filters.http.cors",
         "match.listener.filterChain.filter.subFilter.name", "before envoy.filters.http.router"),
        ("name: envoy.filters.network.http_connection_manager",
         "name: envoy.filters.network.tcp_proxy", "match.listener.filterChain.filter.name",
         "http_connection_manager"))),
    (EF.replace("operation: MERGE\n      value:\n        socket_options",
                "operation: MERGE\n      value:\n        name: x\n        socket_options"),
     "EnvoyFilter/ka.spec.configPatches[1].patch.value.name", "applyTo: HTTP_FILTER"),
    (VS + """  - route: [{destination: {host: fortio-server-l2}}]
""", "VirtualService/v.spec.http[0].route[0].destination.host", "not one of the VS hosts"),
    (VS + """  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: fortio-server}}]
""", "VirtualService/v.spec.http[0].match", "unsupported"),
    (VS + """  - route: [{destination: {host: fortio-server}}]
    fault: {abort: {httpStatus: 700}}
""", "VirtualService/v.spec.http[0].fault.abort.httpStatus", "200..599"),
])
def test_bad_istio_documents_name_file_and_field(tmp_path, doc, field, problem):
    msg = _field_error(tmp_path, doc)
    assert field in msg and problem in msg, msg


def test_two_destination_rules_for_one_host_fail(tmp_path):
    other = (DR % "    {}").replace("name: l2", "name: l2b")
    folder = _lab(tmp_path, DR % "    {}", other)
    with pytest.raises(ManifestError, match="already has DestinationRule l2"):
        load_topology(folder)


def _with_proxy_config(folder: Path, extra: str) -> Path:
    """Add ``extra`` (one ProxyConfig line) to fortio-server's proxy.istio.io/config."""
    f = folder / "fortio-server.yaml"
    f.write_text(f.read_text().replace("          proxyStatsMatcher:",
                                       f"          {extra}\n          proxyStatsMatcher:", 1))
    return folder


def _config(folder: Path, pod: str) -> dict:
    plan = make_plan(load_topology(folder), "t")
    return istiod.sidecar_config(plan, plan.pods[pod], "/tmp/x.log")


def test_proxy_config_concurrency_sets_the_worker_count(tmp_path):
    """ProxyConfig ``concurrency`` from the annotation; Istio's sidecar default is 2."""
    folder = _with_proxy_config(_lab(tmp_path), "concurrency: 1")
    assert _config(folder, "fortio-server-0")["concurrency"] == 1
    assert _config(folder, "fortio-server-l2-0")["concurrency"] == 2
    (folder / "fortio-server.yaml").write_text(
        (folder / "fortio-server.yaml").read_text().replace("concurrency: 1", "concurrency: two"))
    with pytest.raises(ManifestError) as err:
        _config(folder, "fortio-server-0")
    assert "fortio-server.yaml" in str(err.value)
    assert "proxy.istio.io/config.concurrency" in str(err.value)
    assert "'two'" in str(err.value)
