"""``http-fault`` on a real lab: a VirtualService fault pushed live reaches the sidecars
without a restart, applies to the next request of an already open connection, shows as
``FI``/``DI`` at the caller's outbound, and revert pushes the route back (same connection
answered 200 again). Requests are sent from L1's pod netns to L2's Service: the iptables
capture hands them to L1's sidecar (outbound 15001), where Istio programs the fault.
``lab`` and ``unchanged`` are in ``conftest.py``."""

from __future__ import annotations

import json
import socket
import time

import pytest
from http_probe import read_response

from meshlab.envs.local.netns_socket import netns_connect
from meshlab.errors import ConfigError
from meshlab.faults.base import active
from meshlab.faults.http_fault import HttpFault
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hhf"
L1, L2, L2_SVC = "fortio-server-0", "fortio-server-l2-0", "fortio-server-l2"
REQUEST = b"GET /echo?size=10 HTTP/1.1\r\nHost: fortio-server-l2:8080\r\n\r\n"


def _exchange(sock: socket.socket) -> tuple[int, float]:
    """One request on ``sock``: ``(status, seconds)`` (whole response read)."""
    start = time.monotonic()
    sock.sendall(REQUEST)
    response = read_response(sock)
    assert response, "no response"
    return int(response.split()[1]), time.monotonic() - start


def _l1_records(lab) -> list[dict]:
    return [json.loads(line) for line in lab.access_log_lines(L1)]


def test_a_pushed_abort_hits_the_next_request_of_an_open_connection(lab, unchanged):
    pids = dict(lab.state.pids)
    cluster_ip = lab.plan.cluster_ips[f"mark/{L2_SVC}"]
    with netns_connect(lab.pod_shell(L1).netns, cluster_ip, 8080, 5.0) as sock:
        sock.settimeout(5.0)
        assert _exchange(sock)[0] == 200
        with active(HttpFault(host=L2_SVC, abort_http_status=503), lab):
            assert _exchange(sock)[0] == 503  # same connection, next request
            assert _exchange(sock)[0] == 503
        assert _exchange(sock)[0] == 200  # reverted: the route is back, still the same socket
    assert lab.state.pids == pids  # no sidecar was restarted
    flags = wait_until(lambda: [r["response_flags"] for r in _l1_records(lab) if r.get(
        "upstream_cluster", "").startswith("outbound|8080||fortio-server-l2")],
        lambda f: len(f) >= 4, timeout_s=10, what="the 4 requests in L1's access log")
    assert flags[-4:] == ["-", "FI", "FI", "-"], flags


def test_a_pushed_delay_shows_as_di_and_is_gone_after_revert(lab, unchanged):
    cluster_ip = lab.plan.cluster_ips[f"mark/{L2_SVC}"]
    with netns_connect(lab.pod_shell(L1).netns, cluster_ip, 8080, 5.0) as sock:
        sock.settimeout(5.0)
        with active(HttpFault(host=L2_SVC, delay_ms=300), lab):
            status, took_s = _exchange(sock)
            assert status == 200 and took_s >= 0.3
        status, took_s = _exchange(sock)
        assert status == 200 and took_s < 0.3
    wait_until(lambda: [r["response_flags"] for r in _l1_records(lab)],
               lambda f: "DI" in f, timeout_s=10, what="a DI record in L1's access log")


@pytest.mark.parametrize(("params", "message"), [
    ({"host": L2_SVC}, "http-fault: abort_http_status: give an abort status or a delay_ms"),
    ({"host": L2_SVC, "abort_http_status": 99}, "abort_http_status: must be an HTTP status"),
    ({"host": L2_SVC, "delay_ms": 10, "delay_pct": 0}, "delay_pct: must be a number in"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ConfigError, match=message):
        HttpFault(**params)


def test_an_unknown_host_changes_nothing(lab, unchanged):
    with pytest.raises(ConfigError, match="host: no Service named 'nope'"), \
            active(HttpFault(host="nope", abort_http_status=503), lab):
        pass
    assert lab.state.route_faults == {}
