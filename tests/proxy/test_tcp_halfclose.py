"""TCP proxy half-close, idle_timeout and BlackHoleCluster in REAL network namespaces (root).

Client (this process, inside netns A via setns) → ClusterIP ``echo`` 10.96.0.14:9000 → sidecar A
(15001, cluster ``outbound|9000||echo…``) → sidecar B (15006, ``inbound|9000||``) → echo app.
The app's ``LINGER`` mode answers after the client's FIN and then stays half-open, so the
proxies' sockets toward the side that was shut sit in FIN-WAIT-2 (ENVOY.md §8).
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from _pairlab import A_IP, B_IP, pair_lab, poll
from _tcplab import ALL_STATS, ECHO_CLUSTER, ECHO_VIP, recv_until, ss, stat

from meshlab.envs.local.veth_pair import connect_in_netns

pytestmark = pytest.mark.lab

UNKNOWN_IP = "10.96.0.99"  # in the service CIDR, no Service: passthrough / blackhole


@pytest.fixture(scope="module")
def lab():
    with pair_lab({"stats_inclusion_regexps": ALL_STATS}) as lab:
        yield lab


@pytest.fixture(scope="module")
def strict_lab():
    """REGISTRY_ONLY client sidecar, 1 s TCP idle_timeout on the echo cluster."""
    overrides = {"stats_inclusion_regexps": ALL_STATS,
                 "outbound_traffic_policy": "REGISTRY_ONLY",
                 "policies": {"clusters": {ECHO_CLUSTER: {"tcp_idle_timeout_s": 1.0}}}}
    with pair_lab(overrides) as lab:
        yield lab


def _fin_wait2(ns: str, peer: str) -> list[str]:
    return [line for line in ss(ns, "state", "fin-wait-2") if re.search(rf"\s{peer}\s", line)]


def test_half_close_is_relayed_and_held_without_timer(lab):
    with connect_in_netns(lab.ns_a, ECHO_VIP) as s:
        s.sendall(b"LINGER hello")
        assert recv_until(s, b"hello")[0] == b"LINGER hello"
        s.shutdown(socket.SHUT_WR)
        # data still flows toward the client after its FIN
        data, eof = recv_until(s, b"after-eof\n")
        assert (data, eof) == (b"after-eof\n", False)
        # B forwarded the FIN to the app as shutdown(SHUT_WR): its socket to the app is in
        # FIN-WAIT-2, still owned by the sidecar (not orphaned) and with no timer armed
        app = f"{B_IP}:9000"
        b_lines = poll(lambda: _fin_wait2(lab.ns_b, app), bool, timeout_s=5)
        assert b_lines, ss(lab.ns_b)
        assert any("127.0.0.6:" in ln and "users:((" in ln for ln in b_lines), b_lines
        assert not any("timer:" in ln for ln in b_lines), b_lines
        # same on A toward B (A's upstream socket)
        a_lines = poll(lambda: [ln for ln in _fin_wait2(lab.ns_a, app) if "users:((" in ln
                                and A_IP in ln], bool, timeout_s=5)
        assert a_lines and not any("timer:" in ln for ln in a_lines), ss(lab.ns_a)
        # the app side of B's connection is CLOSE-WAIT; nothing changes while we wait a bit
        time.sleep(0.5)
        assert _fin_wait2(lab.ns_b, app) == b_lines
    # closing the client (RST/FIN) ends A's session; bytes were charged to the tcp tree
    rx = poll(lambda: stat(lab.ns_a, f"tcp.{ECHO_CLUSTER}.downstream_cx_rx_bytes_total"),
              lambda v: v is not None and v >= 12)
    assert rx >= 12


def test_both_fins_close_both_sides(lab):
    before = lab.log_lines("a")
    destroy_remote = f"cluster.{ECHO_CLUSTER};.upstream_cx_destroy_remote"
    remote_before = stat(lab.ns_a, destroy_remote) or 0
    with connect_in_netns(lab.ns_a, ECHO_VIP) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        data, eof = recv_until(s, b"", timeout_s=10)  # the plain echo closes after our FIN
        assert (data, eof) == (b"hello", True)
    lines = lab.wait_log("a", lambda ls: len(ls) > len(before)
                         and any(x["upstream_cluster"] == ECHO_CLUSTER for x in ls[len(before):]))
    rec = [x for x in lines[len(before):] if x["upstream_cluster"] == ECHO_CLUSTER][-1]
    assert (rec["response_flags"], rec["bytes_received"], rec["bytes_sent"]) == ("-", 5, 5)
    assert rec["upstream_host"] == f"{B_IP}:9000"
    # the upstream's FIN completed the session: Envoy sees the upstream close (RemoteClose)
    remote = poll(lambda: stat(lab.ns_a, destroy_remote), lambda v: v == remote_before + 1)
    assert remote == remote_before + 1


def test_idle_timeout_closes_half_open_session(strict_lab):
    lab = strict_lab
    with connect_in_netns(lab.ns_a, ECHO_VIP) as s:
        s.sendall(b"LINGER idle")
        assert recv_until(s, b"idle")[0] == b"LINGER idle"
        s.shutdown(socket.SHUT_WR)
        assert recv_until(s, b"after-eof\n")[0] == b"after-eof\n"
        start = time.monotonic()
        data, eof = recv_until(s, b"", timeout_s=15)  # nothing flows: idle_timeout 1 s fires
        waited_s = time.monotonic() - start
    assert (data, eof) == (b"", True)
    assert 0.5 <= waited_s < 10, waited_s
    name = f"tcp.{ECHO_CLUSTER}.idle_timeout"
    assert poll(lambda: stat(lab.ns_a, name), lambda v: v == 1) == 1
    rec = [x for x in lab.log_lines("a") if x["upstream_cluster"] == ECHO_CLUSTER][-1]
    # Envoy keeps tcp_session_idle_timeout as the local close reason only: no flag, no details
    assert (rec["response_flags"], rec["connection_termination_details"]) == ("-", None)


def test_registry_only_tcp_goes_to_blackhole(strict_lab):
    lab = strict_lab
    with connect_in_netns(lab.ns_a, (UNKNOWN_IP, 9000)) as s:
        s.settimeout(10)
        assert s.recv(100) == b""  # closed at once
    total = poll(lambda: stat(lab.ns_a, "tcp.BlackHoleCluster.downstream_cx_total"),
                 lambda v: v == 1)
    assert total == 1
    lines = lab.wait_log("a", lambda ls: any(x["upstream_cluster"] == "BlackHoleCluster"
                                             for x in ls))
    rec = next(x for x in lines if x["upstream_cluster"] == "BlackHoleCluster")
    assert rec["response_flags"] == "UH"
    assert rec["downstream_local_address"] == f"{UNKNOWN_IP}:9000"


def test_registry_only_http_gets_block_all_502(strict_lab):
    lab = strict_lab
    [resp] = lab.get(lab.ns_a, UNKNOWN_IP, 8080, "/x")
    assert (resp["status"], resp["body"]) == (502, "")
    lines = lab.wait_log("a", lambda ls: any(x["route_name"] == "block_all" for x in ls))
    rec = next(x for x in lines if x["route_name"] == "block_all")
    assert (rec["response_code"], rec["response_flags"]) == (502, "-")
    assert rec["response_code_details"] == "direct_response"
    assert rec["upstream_cluster"] is None
    assert stat(lab.ns_a, "http.outbound_0.0.0.0_8080;.rq_direct_response") == 1
