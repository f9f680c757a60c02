"""DestinationRule/EnvoyFilter policies on real sockets in the two-pod lab: circuit-breaker
overflow (503 UO), outlier ejection, TCP keepalive (``ss -tio``) and TCP_USER_TIMEOUT.

Extra Services on A's sidecar, each with its own policy (B's sidecar serves them all inbound):

    cb  10.96.0.20:8080 → B            max_connections 1, max_pending_requests 1
    od  10.96.0.21:8080 → B, B2        outlier detection (consecutive_5xx 3, 100 % ejectable)
    ka  10.96.0.22:8080 → B3           keepalive 30 s and TCP_USER_TIMEOUT 1000 ms
"""

import json
import re
import subprocess
import time

import pytest
from _pairlab import B_IP, _services, pair_lab

B2_IP, B3_IP = "10.244.1.4", "10.244.1.5"
CB, OD, KA = ("outbound|8080||cb.mark.svc.cluster.local",
              "outbound|8080||od.mark.svc.cluster.local",
              "outbound|8080||ka.mark.svc.cluster.local")


def _svc(name: str, vip: str, ips: list[str]) -> dict:
    return {"name": name, "namespace": "mark", "fqdn": f"{name}.mark.svc.cluster.local",
            "cluster_ip": vip,
            "ports": [{"port": 8080, "name": "http", "protocol": "http", "target_port": 8080}],
            "endpoints": [{"ip": ip, "pod": f"{name}-{i}"} for i, ip in enumerate(ips)]}


OVERRIDES = {"a": {
    # one worker: the exact counts below are one Envoy worker's (each worker has its own
    # connection pools and round robin; test_workers.py covers concurrency 2)
    "concurrency": 1,
    "services": _services() + [_svc("cb", "10.96.0.20", [B_IP]),
                               _svc("od", "10.96.0.21", [B_IP, B2_IP]),
                               _svc("ka", "10.96.0.22", [B3_IP])],
    "stats_inclusion_regexps": [r"cluster\..*", r"http\..*", r"listener\..*"],
    "policies": {"clusters": {
        CB: {"circuit_breakers": {"max_connections": 1, "max_pending_requests": 1}},
        OD: {"outlier_detection": {"consecutive_5xx": 3, "interval_s": 1,
                                   "base_ejection_time_s": 60, "max_ejection_percent": 100}},
        KA: {"tcp_keepalive": {"time_s": 30, "interval_s": 5, "probes": 2},
             "socket_options": [{"level": 6, "name": 18, "int_value": 1000}]},
    }, "routes": {OD: {"retry": {"num_retries": 0}}}},
}}


@pytest.fixture(scope="module")
def lab():
    with pair_lab(OVERRIDES) as lab:
        for ip in (B2_IP, B3_IP):  # second and third address of the server pod
            subprocess.run(["ip", "-n", lab.ns_b, "addr", "add", f"{ip}/24", "dev", "eth0"],
                           check=True, timeout=10)
        yield lab


def _stats(lab) -> dict[str, int]:
    body = lab.get(lab.ns_a, "127.0.0.1", 15000, "/stats?format=json")[0]["body"]
    return {s["name"]: s["value"] for s in json.loads(body)["stats"] if "value" in s}


def test_circuit_breaker_overflow_gives_503_uo(lab):
    # warm the pool: with no idle connection even the first request is pending while it
    # connects, and Envoy would overflow every request arriving meanwhile
    assert lab.get(lab.ns_a, "10.96.0.20", 8080, "/echo")[0]["status"] == 200
    res = lab.client(lab.ns_a, {"op": "parallel", "host": "10.96.0.20", "port": 8080,
                                "paths": ["/echo?delay=1.5"] * 4})
    codes = sorted(r["status"] for r in res)
    # one request on the only connection, one pending for it, the others overflow
    assert codes == [200, 200, 503, 503], codes
    uo = [r for r in res if r["status"] == 503]
    for r in uo:
        assert r["headers"].get("x-envoy-overloaded") == "true"
        assert r["body"] == ("upstream connect error or disconnect/reset before headers. "
                             "reset reason: overflow")
    stats = _stats(lab)
    p = f"cluster.{CB};."
    assert stats[p + "upstream_rq_pending_overflow"] == 2
    assert stats[p + "upstream_cx_overflow"] >= 1
    assert stats[p + "upstream_cx_total"] == 1
    assert stats[p + "circuit_breakers.default.remaining_cx"] == 0  # the pooled connection
    assert stats[p + "circuit_breakers.default.cx_open"] == 1
    assert stats[p + "circuit_breakers.default.rq_pending_open"] == 0
    assert stats[p + "upstream_rq_503"] == 2 and stats[p + "upstream_rq_200"] == 3
    lines = lab.wait_log("a", lambda ls: sum(x["upstream_cluster"] == CB for x in ls) >= 5)
    flags = sorted(x["response_flags"] for x in lines if x["upstream_cluster"] == CB)
    assert flags == ["-", "-", "-", "UO", "UO"]
    uo_line = next(x for x in lines if x["response_flags"] == "UO")
    assert uo_line["response_code_details"] == "upstream_reset_before_response_started{overflow}"


def test_outlier_ejects_the_failing_endpoint(lab):
    path = f"/echo?fail_on={B2_IP}"
    res = lab.get(lab.ns_a, "10.96.0.21", 8080, path, n=12, keepalive=False)
    codes = [r["status"] for r in res]
    # round robin until B2 answered three 503s in a row, then B only
    assert codes.count(503) == 3, codes
    assert all(c == 200 for c in codes[codes.index(503) + 5:]), codes
    stats = _stats(lab)
    p = f"cluster.{OD};.outlier_detection."
    assert stats[p + "ejections_active"] == 1
    assert stats[p + "ejections_enforced_consecutive_5xx"] == 1
    assert stats[p + "ejections_detected_consecutive_5xx"] == 1
    lines = [x for x in lab.log_lines("a") if x["upstream_cluster"] == OD]
    assert {x["upstream_host"] for x in lines[-5:]} == {f"{B_IP}:8080"}
    clusters = lab.get(lab.ns_a, "127.0.0.1", 15000, "/clusters")[0]["body"].splitlines()
    assert f"{OD}::{B2_IP}:8080::health_flags::/failed_outlier_check" in clusters
    assert f"{OD}::{B_IP}:8080::health_flags::healthy" in clusters


def _ss_upstream(lab, dst: str) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.ns_a, "ss", "-tnio", "state",
                           "established", "dst", dst], capture_output=True, text=True,
                          timeout=10, check=True).stdout


def test_keepalive_is_set_on_the_upstream_socket(lab):
    assert lab.get(lab.ns_a, "10.96.0.22", 8080, "/echo")[0]["status"] == 200
    out = _ss_upstream(lab, B3_IP)
    assert re.search(r"timer:\(keepalive,[0-9.]+(ms|sec|min)", out), out
    other = _ss_upstream(lab, B_IP)  # the default policy sets no keepalive
    assert "keepalive" not in other, other


def test_tcp_user_timeout_resets_a_stuck_upstream_connection(lab):
    assert lab.get(lab.ns_a, "10.96.0.22", 8080, "/echo")[0]["status"] == 200  # pooled
    def drop(op: str) -> None:  # raw table: before Istio's REDIRECT rewrites the address
        subprocess.run(["ip", "netns", "exec", lab.ns_b, "iptables", "-t", "raw", op,
                        "PREROUTING", "-i", "eth0", "-d", B3_IP, "-j", "DROP"], check=True,
                       timeout=10)

    drop("-I")
    try:
        start = time.monotonic()
        res = lab.client(lab.ns_a, {"op": "http", "host": "10.96.0.22", "port": 8080,
                                    "path": "/echo"}, timeout_s=30)
        elapsed = time.monotonic() - start
    finally:
        drop("-D")
    # without TCP_USER_TIMEOUT the request would wait for tcp_retries2 (~15 min); the client
    # would give up after its own 10 s. With 1000 ms the kernel resets the connection (UC)
    # and the retry's connect times out (connect_timeout 2 s).
    assert res["status"] == 503, res
    assert elapsed < 8.0, elapsed  # measured ~1.5 s (RTO 0.2 + 0.4 + 0.8 s > 1 s)
    lines = lab.wait_log("a", lambda ls: any(x["response_code"] == 503 and
                                             x["upstream_cluster"] == KA for x in ls))
    last = [x for x in lines if x["upstream_cluster"] == KA][-1]
    assert last["response_flags"] == "UC", last
    assert last["response_code_details"] == \
        "upstream_reset_before_response_started{connection_termination}"
    stats = _stats(lab)
    assert stats[f"cluster.{KA};.upstream_cx_destroy_with_active_rq"] >= 1
