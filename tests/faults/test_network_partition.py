"""``network-partition`` on a real lab: packets vanish both ways (no RST: an established
connection stalls, a connect times out), reverting heals the stalled connection, ``reject``
fails fast with a RST, node members cut every pod of the node, and bad input changes nothing.

The client is netshoot (no sidecar, so its socket talks to L2's pod IP directly; L2's sidecar
answers on 8080 through its inbound redirect); sockets are opened from the test in netshoot's
netns (:func:`netns_connect`). ``lab`` and ``unchanged`` are in ``conftest.py``.
"""

from __future__ import annotations

import socket
import time

import pytest

from meshlab.collectors.sockets import snapshot
from meshlab.envs.local.netns_socket import netns_connect
from meshlab.errors import ConfigError, LabError
from meshlab.faults.base import active
from meshlab.faults.network_partition import NetworkPartition
from meshlab.faults.registry import create
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hnp"
CLIENT, L2 = "netshoot-0", "fortio-server-l2-0"
PORT = 8080
REQUEST = b"GET /echo?size=10 HTTP/1.1\r\nHost: l2\r\n\r\n"


def _connect(lab, timeout_s: float = 2.0) -> socket.socket:
    return netns_connect(lab.pod_shell(CLIENT).netns, lab.pod(L2).ip, PORT, timeout_s)


def _recv_some(sock: socket.socket) -> bytes:
    """What arrives within the socket's timeout (b"" when nothing does)."""
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


def _exchange(sock: socket.socket, timeout_s: float) -> bytes:
    """Send one request, return what arrives within ``timeout_s`` (b"" on a timeout)."""
    sock.settimeout(timeout_s)
    sock.sendall(REQUEST)
    return _recv_some(sock)


def test_drop_stalls_an_established_connection_and_revert_heals_it(lab, unchanged):
    sock = _connect(lab)
    with sock:
        assert _exchange(sock, 2.0).startswith(b"HTTP/1.1 200")
        local_port = sock.getsockname()[1]
        fault = NetworkPartition(side_a=[CLIENT], side_b=[L2])
        with active(fault, lab):
            assert _exchange(sock, 1.0) == b""  # no answer, and no RST
            socks = [s for s in snapshot(lab.pod_shell(CLIENT))
                     if s.local.endswith(f":{local_port}")]
            assert [s.state for s in socks] == ["ESTAB"], socks
            assert socks[0].timer == "on" and socks[0].unacked >= 1, socks  # retransmitting
            with pytest.raises(LabError, match="timed out"):  # SYNs vanish too
                _connect(lab, timeout_s=1.0)
            l2_rules = lab.pod_shell(L2).run(["iptables", "-S", fault.chain.chain]).stdout
            assert f"-s {lab.pod(CLIENT).ip}/32" in l2_rules and "-j DROP" in l2_rules
        # healed: the next retransmission gets through and the stalled request is answered
        sock.settimeout(0.2)
        answer = wait_until(lambda: _recv_some(sock), timeout_s=10, what="the stalled answer")
        assert answer.startswith(b"HTTP/1.1 200")


def test_reject_fails_fast(lab, unchanged):
    sock = _connect(lab)
    with sock, active(NetworkPartition(side_a=[CLIENT], side_b=[L2], mode="reject"), lab):
        sock.settimeout(2.0)
        sock.sendall(REQUEST)
        with pytest.raises(ConnectionResetError):
            sock.recv(4096)
        start = time.monotonic()
        with pytest.raises(LabError, match="refused"):
            _connect(lab, timeout_s=2.0)
        assert time.monotonic() - start < 0.5


def test_node_members_cut_every_pod_of_the_node(lab, unchanged):
    client_node, l2_node = lab.pod(CLIENT).node, lab.pod(L2).node
    assert client_node != l2_node
    with active(create("network-partition", side_a=client_node, side_b=l2_node), lab):
        with pytest.raises(LabError, match="timed out"):
            _connect(lab, timeout_s=1.0)
        rules = lab.node_shell(l2_node).run(["iptables", "-S", "FORWARD"]).stdout
        assert "MESHLAB-NP-" in rules
    _connect(lab).close()  # healed


def test_bad_input_names_the_field_and_changes_nothing(lab, unchanged):
    with pytest.raises(ConfigError, match="side_b: netshoot-0 is on both sides"):
        NetworkPartition(side_a=[CLIENT], side_b=[CLIENT, L2])
    with pytest.raises(ConfigError, match="mode: must be one of drop, reject"):
        NetworkPartition(side_a=[CLIENT], side_b=[L2], mode="blackhole")
    with pytest.raises(ConfigError, match="side_a: must be one or more"):
        NetworkPartition(side_a=[], side_b=[L2])
    fault = NetworkPartition(side_a=[CLIENT], side_b=[L2, "no-such-pod"])
    with pytest.raises(ConfigError, match="side_b: 'no-such-pod' is neither a pod"):
        fault.inject(lab)  # resolved before anything is installed
    _connect(lab).close()
