"""Admin API pages and mutations (ENVOY.md §5), as pure functions over an AdminContext."""

from __future__ import annotations

import json

import pytest

from meshlab.proxy.admin.endpoints import AdminContext, admin_response
from meshlab.proxy.admin.server import init_cluster_stats
from meshlab.proxy.admin.state import ServerState
from meshlab.proxy.config.sidecar import parse_config
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore

FQDN = "fortio-server.mark.svc.cluster.local"
C = f"outbound|8080||{FQDN}"
HOST = ("10.244.1.3", 8080)


def make_ctx(policies: dict | None = None) -> tuple[AdminContext, list]:
    config = parse_config({
        "pod": {"name": "fortio-client-0", "namespace": "mark", "ip": "10.244.1.2",
                "workload": "fortio-client", "app": "fortio-client"},
        "inbound": [{"port": 8080, "name": "http"}],
        "services": [{"name": "fortio-server", "namespace": "mark", "fqdn": FQDN,
                      "cluster_ip": "10.96.0.12",
                      "ports": [{"port": 8080, "name": "http", "target_port": 8080}],
                      "endpoints": [{"ip": HOST[0]}]},
                     {"name": "echo", "namespace": "mark", "fqdn": "echo.mark.svc.cluster.local",
                      "cluster_ip": "10.96.0.14", "ports": [{"port": 9000, "name": "tcp-echo"}],
                      "endpoints": [{"ip": HOST[0]}]}],
        "stats_inclusion_regexps": [r"cluster\..*fortio.*"],
        "policies": policies or {},
    })
    stats = ProxyStats(StatsStore(StatsMatcher(config.stats_inclusion_regexps)))
    clusters = init_cluster_stats(config, stats)
    calls: list = []
    ctx = AdminContext(stats, config, ServerState(stats.store, clusters=clusters, listeners=3),
                       on_quit=lambda: calls.append("quit"),
                       on_drain=lambda inbound, graceful: calls.append((inbound, graceful)))
    return ctx, calls


def get(ctx: AdminContext, target: str, method: str = "GET") -> tuple[int, str]:
    reply = admin_response(method, target, ctx)
    return reply.status, reply.body.decode()


def test_clusters_text_lines_with_host_stats():
    ctx, _ = make_ctx({"clusters": {C: {"outlier_detection": {"consecutive_5xx": 3},
                                        "circuit_breakers": {"max_connections": 7}}}})
    cs = ctx.stats.cluster(C)
    hs = cs.host(HOST)
    hs.cx_total, hs.rq_total, hs.rq_success, hs.cx_active = 2, 5, 4, 1
    status, body = get(ctx, "/clusters")
    assert status == 200
    lines = body.splitlines()
    mine = [ln for ln in lines if ln.startswith(C + "::")]
    assert mine[0] == f"{C}::observability_name::{C}"
    assert mine[1] == f"{C}::outlier::success_rate_average::-1"
    assert f"{C}::default_priority::max_connections::7" in mine
    assert f"{C}::default_priority::max_requests::4294967295" in mine
    assert f"{C}::high_priority::max_retries::3" in mine
    assert f"{C}::added_via_api::true" in mine and f"{C}::eds_service_name::{C}" in mine
    host = [ln.split("::", 2)[2] for ln in mine if ln.startswith(f"{C}::10.244.1.3:8080::")]
    assert host == ["cx_active::1", "cx_connect_fail::0", "cx_total::2", "rq_active::0",
                    "rq_error::0", "rq_success::4", "rq_timeout::0", "rq_total::5", "hostname::",
                    "health_flags::healthy", "weight::1", "region::", "zone::", "sub_zone::",
                    "canary::false", "priority::0", "success_rate::-1",
                    "local_origin_success_rate::-1"]
    assert "prometheus_stats::added_via_api::false" in lines
    assert "prometheus_stats::127.0.0.1:15000::cx_total::0" in lines
    assert "PassthroughCluster::observability_name::PassthroughCluster" in lines
    assert "inbound|8080||::added_via_api::true" in lines
    # membership gauges come from the same inventory (the default matcher keeps fortio clusters)
    assert ctx.store.value(f"cluster.{C};.membership_total") == 1
    doc = json.loads(get(ctx, "/clusters?format=json")[1])
    status_of = {c["name"]: c for c in doc["cluster_statuses"]}[C]
    [h] = status_of["host_statuses"]
    assert h["address"] == {"socket_address": {"address": "10.244.1.3", "port_value": 8080}}
    stats = {s["name"]: s for s in h["stats"]}
    assert stats["rq_total"]["value"] == "5" and "value" not in stats["rq_error"]
    assert stats["cx_active"]["type"] == "GAUGE"
    assert status_of["circuit_breakers"]["thresholds"][1]["priority"] == "HIGH"


def test_listeners_text_and_json():
    ctx, _ = make_ctx()
    body = get(ctx, "/listeners")[1]
    assert body.splitlines()[:3] == ["virtualOutbound::0.0.0.0:15001",
                                     "virtualInbound::0.0.0.0:15006",
                                     "0.0.0.0_15090::0.0.0.0:15090"]
    assert "0.0.0.0_8080::0.0.0.0:8080" in body and "10.96.0.14_9000::10.96.0.14:9000" in body
    doc = json.loads(get(ctx, "/listeners?format=json")[1])
    assert doc["listener_statuses"][1]["local_address"]["socket_address"]["port_value"] == 15006


def test_logging_levels_usage_and_post_only():
    ctx, _ = make_ctx()
    status, body = get(ctx, "/logging", "POST")
    assert status == 200 and body.startswith("active loggers:\n")
    assert "  misc: error\n" in body and "  router: warning\n" in body
    assert get(ctx, "/logging?router=debug", "POST")[0] == 200
    assert ctx.server.logging.level("router") == "debug"
    get(ctx, "/logging?paths=http:trace,pool:info", "POST")
    assert (ctx.server.logging.level("http"), ctx.server.logging.level("pool")) == ("trace", "info")
    get(ctx, "/logging?level=critical", "POST")
    assert ctx.server.logging.level("misc") == "critical"
    status, body = get(ctx, "/logging?level=loud", "POST")
    assert status == 400 and body.startswith("error: ")
    assert "usage: /logging?<name>=<level> (change single level)\n" in body
    assert "levels: trace debug info warning error critical off \n" in body
    assert get(ctx, "/logging?nosuch=info", "POST")[0] == 400
    assert get(ctx, "/logging?paths=http:info,bad:info", "POST")[0] == 400
    assert ctx.server.logging.level("http") == "critical"  # a bad paths= changes nothing
    status, body = get(ctx, "/logging?level=debug")  # GET on a mutating endpoint
    assert status == 400 and "POST" in body
    assert ctx.server.logging.level("misc") == "critical"


def test_mutations_need_post_and_work():
    ctx, calls = make_ctx()
    counter = ctx.stats.cluster(C).upstream_rq_total
    counter.inc(3)
    for path in ("/reset_counters", "/healthcheck/fail", "/drain_listeners", "/quitquitquit"):
        assert get(ctx, path)[0] == 400
    assert counter.value == 3 and calls == [] and get(ctx, "/ready") == (200, "LIVE\n")
    assert get(ctx, "/reset_counters", "POST") == (200, "OK\n") and counter.value == 0
    assert get(ctx, "/healthcheck/fail", "POST") == (200, "OK\n")
    assert get(ctx, "/ready") == (503, "DRAINING\n")
    assert ctx.store.value("server.state") == 1 and ctx.store.value("server.live") == 0
    assert json.loads(get(ctx, "/server_info")[1])["state"] == "DRAINING"
    get(ctx, "/healthcheck/ok", "POST")
    assert get(ctx, "/ready") == (200, "LIVE\n") and ctx.store.value("server.state") == 0
    get(ctx, "/drain_listeners?inboundonly&graceful", "POST")
    get(ctx, "/drain_listeners", "POST")
    get(ctx, "/quitquitquit", "POST")
    assert calls == [(True, True), (False, False), "quit"]


def test_server_info_and_readiness_stats():
    ctx, _ = make_ctx()
    info = json.loads(get(ctx, "/server_info")[1])
    assert info["state"] == "LIVE" and info["uptime_current_epoch"].endswith("s")
    assert info["node"]["id"] == "sidecar~10.244.1.2~fortio-client-0.mark~mark.svc.cluster.local"
    assert info["command_line_options"]["log_level"] == "warning"
    status, body = get(ctx, "/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)")
    assert status == 200
    assert body == "listener_manager.workers_started: 1\nserver.state: 0\n"
    text = get(ctx, "/stats?filter=^server\\.")[1]
    for name in ("server.uptime", "server.memory_allocated", "server.concurrency: 1", "server.live: 1"):
        assert name in text
    assert "cluster_manager.active_clusters: " in get(ctx, "/stats")[1]
    assert get(ctx, "/stats?filter=(")[0] == 400


def test_stats_type_param_lists_one_kind_like_envoy():
    """``/stats?type=`` (Envoy ``stats_params.cc``): Counters/Gauges/Histograms split the text
    and json output, All is the default, TextReadouts is empty here, anything else is 400."""
    ctx, _ = make_ctx()
    ctx.stats.cluster(C).upstream_rq_total.inc()

    def names(target: str) -> set[str]:
        status, body = get(ctx, target)
        assert status == 200
        return {line.rpartition(": ")[0] for line in body.splitlines()}
    every, counters = names("/stats"), names("/stats?type=Counters")
    gauges, hists = names("/stats?type=Gauges"), names("/stats?type=Histograms")
    assert names("/stats?type=All") == every == counters | gauges | hists
    assert not (counters & gauges) and not (counters & hists) and not (gauges & hists)
    assert f"cluster.{C};.upstream_rq_total" in counters and "server.live" in gauges
    assert f"cluster.{C};.upstream_rq_time" in hists
    assert all(": P0(" in ln or ln.endswith(": No recorded values")
               for ln in get(ctx, "/stats?type=Histograms")[1].splitlines())
    assert get(ctx, "/stats?type=TextReadouts") == (200, "")
    doc = json.loads(get(ctx, "/stats?format=json&type=Gauges&filter=^server\\.live$")[1])
    assert doc == {"stats": [{"name": "server.live", "value": 1}]}
    assert get(ctx, "/stats?type=counters") == (400, "invalid &type= param")
    assert get(ctx, "/stats?format=json&type=")[0] == 400


def test_config_dump_shape_resource_and_name_regex():
    ctx, _ = make_ctx({"clusters": {C: {"connect_timeout_s": 0.25}},
                       "routes": {C: {"timeout_s": 2, "fault": {"abort": {"http_status": 503}}}}})
    doc = json.loads(get(ctx, "/config_dump")[1])
    types = [c["@type"].rsplit(".", 1)[1] for c in doc["configs"]]
    assert types == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
                     "RoutesConfigDump", "SecretsConfigDump"]
    boot = doc["configs"][0]["bootstrap"]
    assert boot["stats_config"]["use_all_default_tags"] is False
    assert {"prefix": "cluster_manager"} in boot["stats_config"]["stats_matcher"]["inclusion_list"][
        "patterns"]
    dyn = {c["cluster"]["name"]: c["cluster"] for c in doc["configs"][1]["dynamic_active_clusters"]}
    assert dyn[C]["connect_timeout"] == "0.25s" and dyn[C]["type"] == "EDS"
    assert dyn["inbound|8080||"]["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"
    routes = doc["configs"][3]["dynamic_route_configs"]
    [route] = [r for r in routes if r["route_config"]["name"] == "8080"]
    vh = route["route_config"]["virtual_hosts"][0]
    assert vh["routes"][0]["route"]["timeout"] == "2s"
    assert "envoy.filters.http.fault" in vh["routes"][0]["typed_per_filter_config"]
    status, body = get(ctx, "/config_dump?resource=dynamic_active_clusters&name_regex=fortio")
    items = json.loads(body)["configs"]
    assert status == 200 and [i["cluster"]["name"] for i in items] == [C]
    assert items[0]["@type"].endswith("ClustersConfigDump.DynamicCluster")
    assert get(ctx, "/config_dump?resource=nope")[0] == 404
    assert get(ctx, "/config_dump?name_regex=(")[0] == 400
    eds = json.loads(get(ctx, "/config_dump?include_eds")[1])["configs"]
    assert any(c["@type"].endswith("EndpointsConfigDump") for c in eds)


def _route_of(ctx: AdminContext, cluster: str) -> dict:
    routes = json.loads(get(ctx, "/config_dump?resource=dynamic_route_configs")[1])["configs"]
    return next(r["route"] for rc in routes for vh in rc["route_config"]["virtual_hosts"]
                for r in vh["routes"] if r["route"]["cluster"] == cluster)


def test_config_dump_retry_policy_lists_only_the_configured_status_codes():
    """Istio 1.24+ (EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY) sets no retriable_status_codes on
    the default outbound retry; a VirtualService's numeric retryOn entries become them."""
    default = _route_of(make_ctx()[0], C)["retry_policy"]
    assert default["num_retries"] == 2 and "retriable_status_codes" not in default
    assert "retriable-status-codes" in default["retry_on"].split(",")
    ctx, _ = make_ctx({"routes": {C: {"retry": {"num_retries": 3,
                                                "retry_on": "connect-failure,503,409"}}}})
    vs = _route_of(ctx, C)["retry_policy"]
    assert vs["retriable_status_codes"] == [409, 503] and vs["num_retries"] == 3
    assert vs["retry_on"] == "connect-failure,retriable-status-codes"


@pytest.mark.parametrize("path", ["/stats/prometheus", "/stats?format=prometheus"])
def test_prometheus_on_admin(path):
    ctx, _ = make_ctx()
    status, body = get(ctx, path)
    assert status == 200 and "# TYPE envoy_server_state gauge" in body
