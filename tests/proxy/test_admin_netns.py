"""Admin API and stats endpoints over real sockets in the two-pod netns lab (needs root).

Requests go client → sidecar A → sidecar B → app; the admin pages are read from inside each
pod's netns (127.0.0.1:15000, 15090, 15020) as ``curl`` in istio-proxy would.
"""

from __future__ import annotations

import json

import pytest
from _pairlab import A_IP, B_IP, CLUSTER, FQDN, _services, pair_lab
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.lab

N = 5
#: A second Service on B's pod, unused until the drain test: its cluster has its own pool in A,
#: so the first request to it must open a new connection to B after B stopped 15006.
FRESH_VIP = "10.96.0.15"
FRESH = {"name": "fresh", "namespace": "mark", "fqdn": "fresh.mark.svc.cluster.local",
         "cluster_ip": FRESH_VIP,
         "ports": [{"port": 8080, "name": "http", "protocol": "http", "target_port": 8080}],
         "endpoints": [{"ip": B_IP, "pod": "fortio-server-0"}]}


@pytest.fixture(scope="module")
def lab():
    assert FQDN != FRESH["fqdn"]
    services = [*_services(), FRESH]
    # A has one worker, so the drain test's request reuses the pooled connection to B that the
    # fixture opened (with two, Envoy's workers each have their own pool); B keeps two
    with pair_lab({"a": {"services": services, "concurrency": 1},
                   "b": {"services": services}}) as lab:
        resps = lab.get(lab.ns_a, "10.96.0.12", 8080, "/echo", n=N)
        assert [r["status"] for r in resps] == [200] * N
        yield lab


def admin(lab, ns: str, path: str, method: str = "GET", port: int = 15000) -> dict:
    return lab.client(ns, {"op": "http", "host": "127.0.0.1", "port": port, "path": path,
                           "method": method})


def host_stats(body: str, cluster: str, host: str) -> dict[str, str]:
    prefix = f"{cluster}::{host}::"
    return dict(ln[len(prefix):].split("::", 1) for ln in body.splitlines()
                if ln.startswith(prefix))


def test_clusters_per_host_stats_both_sides(lab):
    a = admin(lab, lab.ns_a, "/clusters")
    assert a["status"] == 200
    hs = host_stats(a["body"], CLUSTER, f"{B_IP}:8080")
    assert int(hs["rq_total"]) >= N and int(hs["rq_success"]) >= N
    assert int(hs["cx_total"]) >= 1 and hs["rq_active"] == "0" and hs["rq_error"] == "0"
    assert hs["health_flags"] == "healthy" and hs["success_rate"] == "-1"
    assert f"{CLUSTER}::added_via_api::true" in a["body"]
    b = admin(lab, lab.ns_b, "/clusters")
    inbound = host_stats(b["body"], "inbound|8080||", f"{B_IP}:8080")  # ORIGINAL_DST host
    assert int(inbound["rq_total"]) >= N
    doc = json.loads(admin(lab, lab.ns_a, "/clusters?format=json")["body"])
    names = {c["name"] for c in doc["cluster_statuses"]}
    assert {CLUSTER, "PassthroughCluster", "BlackHoleCluster", "prometheus_stats"} <= names


def test_prometheus_on_15090_and_merged_15020(lab):
    body = lab.get(lab.ns_a, B_IP, 15090, "/stats/prometheus")[0]["body"]
    parsed = list(text_string_to_metric_families(body))
    families = {f.name: f for f in parsed}  # note: ..._rq_total and ..._rq share a family name
    samples = [s for f in parsed for s in f.samples]
    rq = [s for s in samples if s.name == "envoy_cluster_upstream_rq_total"  # parser adds _total
          and s.labels.get("cluster_name") == "inbound|8080||" and "response_code" in s.labels]
    assert rq and rq[0].labels["response_code"] == "200" and rq[0].value >= N
    assert list(rq[0].labels) == ["response_code", "cluster_name"]
    total = [s for s in samples if s.name == "istio_requests_total"]
    assert total and len(total[0].labels) == 25 and total[0].labels["reporter"] == "destination"
    assert families["istio_build"].samples[0].labels["component"] == "proxy"
    merged = lab.get(lab.ns_a, B_IP, 15020, "/stats/prometheus")[0]["body"]
    assert "istio_requests_total{" in merged and "# TYPE envoy_server_state gauge" in merged
    assert lab.get(lab.ns_a, B_IP, 15090, "/stats")[0]["status"] == 404  # only the stats route


def test_readiness_query_logging_and_config_dump(lab):
    ready = admin(lab, lab.ns_a, "/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)")
    assert ready["body"] == "listener_manager.workers_started: 1\nserver.state: 0\n"
    listed = admin(lab, lab.ns_a, "/logging", "POST")
    assert listed["status"] == 200 and "  misc: error\n" in listed["body"]
    assert admin(lab, lab.ns_a, "/logging?level=debug")["status"] == 400  # GET: no effect
    assert "  router: warning\n" in admin(lab, lab.ns_a, "/logging", "POST")["body"]
    bad = admin(lab, lab.ns_a, "/logging?level=loud", "POST")
    assert bad["status"] == 400 and "usage: /logging?level=<level>" in bad["body"]
    dump = json.loads(admin(lab, lab.ns_a, "/config_dump")["body"])
    assert dump["configs"][0]["bootstrap"]["node"]["id"].startswith(f"sidecar~{A_IP}~")
    listeners = admin(lab, lab.ns_b, "/listeners")["body"]
    assert "virtualInbound::0.0.0.0:15006" in listeners
    info = json.loads(admin(lab, lab.ns_b, "/server_info")["body"])
    assert info["state"] == "LIVE"


def test_healthcheck_fail_and_reset_counters(lab):
    assert admin(lab, lab.ns_b, "/healthcheck/fail")["status"] == 400  # GET: no effect
    assert admin(lab, lab.ns_b, "/ready")["body"] == "LIVE\n"
    assert admin(lab, lab.ns_b, "/healthcheck/fail", "POST")["body"] == "OK\n"
    ready = admin(lab, lab.ns_b, "/ready")
    assert (ready["status"], ready["body"]) == (503, "DRAINING\n")
    assert lab.get(lab.ns_a, B_IP, 15020, "/healthz/ready")[0]["status"] == 503
    admin(lab, lab.ns_b, "/healthcheck/ok", "POST")
    assert admin(lab, lab.ns_b, "/ready")["status"] == 200
    assert admin(lab, lab.ns_a, "/reset_counters", "POST")["body"] == "OK\n"
    stats = admin(lab, lab.ns_a, "/stats?filter=fortio-server.*upstream_rq_200")["body"]
    assert stats == f"cluster.{CLUSTER};.upstream_rq_200: 0\n"
    hs = host_stats(admin(lab, lab.ns_a, "/clusters")["body"], CLUSTER, f"{B_IP}:8080")
    assert hs["rq_total"] == "0"


def test_drain_listeners_inboundonly_stops_15006_only(lab):
    """Runs last in this module: it leaves sidecar B without an inbound listener."""
    assert admin(lab, lab.ns_b, "/drain_listeners?inboundonly")["status"] == 400
    assert lab.get(lab.ns_a, "10.96.0.12", 8080, "/echo")[0]["status"] == 200
    assert admin(lab, lab.ns_b, "/drain_listeners?inboundonly", "POST")["body"] == "OK\n"
    probe = lab.client(lab.ns_b, {"op": "wait", "host": B_IP, "port": 15006, "timeout_s": 0.3})
    assert not probe["ok"] and "refused" in probe["error"].lower()
    assert lab.client(lab.ns_b, {"op": "wait", "host": "127.0.0.1", "port": 15001,
                                 "timeout_s": 2})["ok"]
    # connections B accepted before keep working (Envoy drains, it does not cut them) ...
    assert lab.get(lab.ns_a, "10.96.0.12", 8080, "/echo")[0]["status"] == 200
    # ... while a new connection (a cluster A never used) is refused → 503 UF,URX
    fresh = lab.get(lab.ns_a, FRESH_VIP, 8080, "/echo")[0]
    assert fresh["status"] == 503
    assert fresh["body"].startswith("upstream connect error or disconnect/reset before headers.")
    lines = lab.wait_log("a", lambda ls: any(x["upstream_cluster"].startswith("outbound|8080||fresh")
                                             for x in ls))
    assert [x["response_flags"] for x in lines
            if x["upstream_cluster"].startswith("outbound|8080||fresh")] == ["UF,URX"]
    stats = admin(lab, lab.ns_b, "/stats?filter=^listener_manager\\.listener_stopped")["body"]
    assert stats == "listener_manager.listener_stopped: 1\n"
