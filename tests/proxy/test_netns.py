"""Integration tests of the asyncio sidecar in REAL network namespaces (needs root).

Topology: see :mod:`_pairlab` (client pod A → ClusterIP → server pod B with the app).
"""

from __future__ import annotations

import json

import pytest
from _pairlab import A_IP, B_IP, CLUSTER, FQDN, pair_lab, poll
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    # one worker per sidecar: the pool-reuse test counts the connections of one pool (each of
    # Envoy's workers has its own; test_workers.py covers two)
    with pair_lab({"concurrency": 1}) as lab:
        yield lab


def test_outbound_and_inbound_capture_with_request_id(lab):
    [resp] = lab.get(lab.ns_a, "10.96.0.12", 8080, "/echo",
                     headers={"user-agent": "meshlab-test"})
    assert resp["status"] == 200
    assert resp["headers"]["server"] == "envoy"  # outbound sidecar overwrites
    assert "x-envoy-upstream-service-time" in resp["headers"]
    echo = json.loads(resp["body"])
    assert echo["peer"].startswith("127.0.0.6:")  # inbound upstream bound to 127.0.0.6
    rid = echo["headers"]["x-request-id"]
    assert echo["headers"]["x-envoy-attempt-count"] == "1"
    assert echo["headers"]["x-forwarded-proto"] == "http"
    assert "x-envoy-peer-metadata" not in echo["headers"]
    a = lab.wait_log("a", lambda ls: any(x["request_id"] == rid for x in ls))
    b = lab.wait_log("b", lambda ls: any(x["request_id"] == rid for x in ls))
    la = next(x for x in a if x["request_id"] == rid)
    lb = next(x for x in b if x["request_id"] == rid)
    assert la["downstream_local_address"] == "10.96.0.12:8080"  # SO_ORIGINAL_DST
    assert (la["upstream_cluster"], la["upstream_host"]) == (CLUSTER, f"{B_IP}:8080")
    assert (la["response_code"], la["response_flags"], la["user_agent"]) == \
        (200, "-", "meshlab-test")
    assert lb["upstream_cluster"] == "inbound|8080||"
    assert lb["downstream_local_address"] == f"{B_IP}:8080"
    assert lb["upstream_local_address"].startswith("127.0.0.6:")
    assert lb["response_code_details"] == "via_upstream"


def test_keepalive_pool_reuse(lab):
    before = len(json.loads(lab.get(lab.ns_b, B_IP, 8080, "/peers")[0]["body"]))
    # 20 requests on 20 NEW client connections: the sidecars' pools must reuse upstream conns
    resps = lab.get(lab.ns_a, "10.96.0.12", 8080, "/echo", n=20, keepalive=False)
    assert [r["status"] for r in resps] == [200] * 20
    peers = json.loads(lab.get(lab.ns_b, B_IP, 8080, "/peers")[0]["body"])
    assert len(peers) - before <= 2  # B→app connections (plus this /peers call)
    stats = lab.get(lab.ns_a, "127.0.0.1", 15000, "/stats")[0]["body"]
    values = dict(line.rsplit(": ", 1) for line in stats.splitlines() if ": " in line)
    assert int(values[f"cluster.{CLUSTER};.upstream_rq_total"]) >= 20
    assert int(values[f"cluster.{CLUSTER};.upstream_cx_total"]) <= 2


def test_refused_port_is_uf_urx(lab):
    [resp] = lab.get(lab.ns_a, "10.96.0.13", 8080, "/echo")
    assert resp["status"] == 503
    assert resp["body"] == ("upstream connect error or disconnect/reset before headers. retried "
                            "and the latest reset reason: remote connection failure, transport "
                            "failure reason: delayed connect error: Connection refused")
    lines = lab.wait_log("a", lambda ls: any(x["response_flags"] == "UF,URX" for x in ls))
    line = [x for x in lines if x["response_flags"] == "UF,URX"][-1]
    assert line["upstream_cluster"] == "outbound|8080||refused.mark.svc.cluster.local"
    assert line["upstream_transport_failure_reason"] == "delayed_connect_error:_Connection_refused"
    stats = lab.get(lab.ns_a, "127.0.0.1", 15000,
                    "/stats?filter=refused")[0]["body"]
    assert "upstream_rq_retry: 2" in stats and "upstream_cx_connect_fail: 3" in stats


def test_app_503_passes_through_without_flag(lab):
    [resp] = lab.get(lab.ns_a, "10.96.0.12", 8080, "/status/503")
    assert resp["status"] == 503 and resp["body"] == "app says 503"
    lines = lab.wait_log("a", lambda ls: any(x["path"] == "/status/503" for x in ls))
    line = [x for x in lines if x["path"] == "/status/503"][-1]
    assert (line["response_flags"], line["response_code_details"]) == ("-", "via_upstream")


def test_prometheus_and_admin_endpoints(lab):
    # histograms appear after a stats flush (0.2 s here)
    prom = poll(lambda: lab.get(lab.ns_a, A_IP, 15090, "/stats/prometheus")[0],
                lambda r: "istio_request_duration_milliseconds" in r["body"], timeout_s=5)
    assert prom["status"] == 200
    fams = {f.name: f for f in text_string_to_metric_families(prom["body"])}
    reqs = [s for s in fams["istio_requests"].samples if s.name == "istio_requests_total"]
    src = [s for s in reqs if s.labels["destination_service"] == FQDN]
    assert src and src[0].labels["reporter"] == "source"
    assert src[0].labels["destination_workload"] == "fortio-server"  # peer metadata exchange
    assert "istio_request_duration_milliseconds" in fams
    b_prom = lab.get(lab.ns_b, B_IP, 15020, "/stats/prometheus")[0]["body"]
    assert 'reporter="destination",source_workload="fortio-client"' in b_prom
    ready = lab.get(lab.ns_a, "127.0.0.1", 15000, "/ready")[0]
    assert (ready["status"], ready["body"]) == (200, "LIVE\n")
    assert lab.get(lab.ns_a, A_IP, 15020, "/healthz/ready")[0]["status"] == 200
    assert lab.get(lab.ns_a, "127.0.0.1", 15000, "/nope")[0]["status"] == 404
    assert lab.get(lab.ns_a, "127.0.0.1", 15000, "/quitquitquit")[0]["status"] == 400
    js = json.loads(lab.get(lab.ns_a, "127.0.0.1", 15000, "/stats?format=json")[0]["body"])
    names = {s["name"] for s in js["stats"] if "name" in s}
    assert "listener.0.0.0.0_15001.downstream_cx_total" in names


def test_tcp_relay_both_sidecars(lab):
    res = lab.client(lab.ns_a, {"op": "tcp", "host": "10.96.0.14", "port": 9000,
                                "payload": "hello over tcp"})
    assert res["echo"] == "hello over tcp"
    a = lab.wait_log("a", lambda ls: any(x["upstream_cluster"].startswith("outbound|9000")
                                         for x in ls))
    la = next(x for x in a if x["upstream_cluster"].startswith("outbound|9000"))
    assert (la["method"], la["response_code"], la["response_flags"]) == (None, 0, "-")
    assert (la["bytes_received"], la["bytes_sent"]) == (14, 14)
    b = lab.wait_log("b", lambda ls: any(x["upstream_cluster"] == "inbound|9000||" for x in ls))
    lb = next(x for x in b if x["upstream_cluster"] == "inbound|9000||")
    assert lb["upstream_local_address"].startswith("127.0.0.6:")


def test_throughput_through_pair(lab):
    res = lab.client(lab.ns_a, {"op": "bench", "host": "10.96.0.12", "port": 8080,
                                "path": "/echo", "n": 2000, "conns": 8}, timeout_s=120)
    print(f"\nthroughput through sidecar pair: {res['rps']:.0f} req/s "
          f"({res['ok']} ok, {res['errors']} errors in {res['elapsed_s']:.2f} s)")
    assert res["errors"] == 0
    assert res["rps"] > 100
