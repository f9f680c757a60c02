"""``network-delay`` on a real lab (this kernel has no ``sch_netem``, so ``auto`` runs the
NFQUEUE agent): the added delay and its spread, loss and duplication within a binomial band,
reordering, corruption, the queue bypass when the agent dies, an exact revert, the netem
backend's commands, and bad input. ``lab`` and ``unchanged`` are in ``conftest.py``.

Delay is measured as the request/response time of one kept-alive HTTP connection from
netshoot (no sidecar) to L2's pod IP, with and without the fault on L2's ingress: each request
crosses the delay once.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import statistics
import time

import pytest
from udp_probe import udp_sequence

from meshlab.envs.local.netns_socket import netns_connect
from meshlab.errors import CommandError, ConfigError
from meshlab.faults.base import active
from meshlab.faults.network_delay import NetworkDelay
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hnd"
CLIENT, L2 = "netshoot-0", "fortio-server-l2-0"
REQUEST = b"GET /echo?size=10 HTTP/1.1\r\nHost: l2\r\n\r\n"
UDP_PORT = 9997
N = 1000
PACED_GAP_S = 0.0005


def rtts_ms(lab, n: int = 150) -> list[float]:
    """Request/response times (ms) of ``n`` requests on one connection, netshoot → L2."""
    sock = netns_connect(lab.pod_shell(CLIENT).netns, lab.pod(L2).ip, 8080, 5)
    out = []
    with sock:
        for _ in range(n):
            start = time.perf_counter()
            sock.sendall(REQUEST)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            out.append((time.perf_counter() - start) * 1000)
    return out


def band(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    """Binomial(n, p) mean ± ``sigmas`` σ."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def test_delay_and_jitter_are_added_as_asked(lab, unchanged):
    base = statistics.median(rtts_ms(lab))
    fault = NetworkDelay(target=L2, delay_ms=20, jitter_ms=5, direction="ingress",
                         backend="nfqueue")  # the agent, whatever this kernel has
    with active(fault, lab):
        assert fault.backend_used == "nfqueue"
        delayed = rtts_ms(lab, 300)
    added = statistics.median(delayed) - base
    spread = statistics.stdev(delayed)
    print(f"\nadded median {added:.2f} ms, stdev {spread:.2f} ms (asked 20 ± 5)")
    # the userspace agent can only add time: under a busy CPU its wake-ups run late (22.4 ms
    # was seen on CI while other tests ran), never early
    assert -2 <= added - 20 <= 5, added
    assert 3.5 <= spread <= 8, spread
    assert statistics.median(rtts_ms(lab)) < base + 2  # reverted


def test_loss_and_duplication_are_within_a_binomial_band(lab, unchanged):
    # paced at about 2000 datagrams/s: sent back to back, a burst can overflow the agent's
    # netlink socket while a busy machine has it descheduled, and the kernel drops the excess
    # (CI once lost 27 datagrams in a row that way) — a loss the fault did not ask for
    with active(NetworkDelay(target=CLIENT, loss_pct=10), lab):
        got = len(set(udp_sequence(lab, CLIENT, L2, N, UDP_PORT, gap_s=PACED_GAP_S)))
    low, high = band(N, 0.9)
    assert low <= got <= high, got
    with active(NetworkDelay(target=CLIENT, duplicate_pct=10), lab):
        seq = udp_sequence(lab, CLIENT, L2, N, UDP_PORT, gap_s=PACED_GAP_S)
    low, high = band(N, 0.1)
    assert set(seq) == set(range(N)) and low <= len(seq) - N <= high, len(seq)


def test_reorder_sends_some_packets_ahead(lab, unchanged):
    with active(NetworkDelay(target=CLIENT, delay_ms=10, reorder_pct=50), lab):
        seq = udp_sequence(lab, CLIENT, L2, 200, UDP_PORT, gap_s=0.001)
    inversions = sum(1 for a, b in itertools.pairwise(seq) if b < a)
    assert sorted(seq) == list(range(200)) and inversions >= 10, inversions


def test_corrupted_datagrams_fail_their_checksum(lab, unchanged):
    with active(NetworkDelay(target=CLIENT, corrupt_pct=100), lab):
        assert udp_sequence(lab, CLIENT, L2, 50, UDP_PORT) == []
    assert len(udp_sequence(lab, CLIENT, L2, 50, UDP_PORT)) == 50


def test_a_dead_agent_lets_traffic_pass(lab, unchanged):
    fault = NetworkDelay(target=L2, delay_ms=200, direction="ingress", backend="nfqueue")
    with active(fault, lab):
        shell = lab.pod_shell(L2)
        (pid,) = fault._agent_pids(shell)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not fault._agent_pids(shell), timeout_s=5, what="agent gone")
        assert statistics.median(rtts_ms(lab, 20)) < 100  # --queue-bypass: not blackholed


def test_netem_backend_commands_and_its_absence_here(lab, unchanged):
    fault = NetworkDelay(target=L2, delay_ms=50, jitter_ms=5, correlation_pct=25,
                         loss_pct=1, peer_pod=CLIENT, direction="both", backend="netem")
    cmds = [" ".join(c) for c in fault.netem_commands("10.244.1.2/32")]
    assert cmds[0] == "tc qdisc add dev eth0 root handle 1: htb default 0"
    assert cmds[1].startswith("tc class add dev eth0 parent 1: classid 1:3 htb rate")
    assert cmds[2].endswith("parent 1:3 netem delay 50ms 5ms 25% distribution normal loss 1%")
    assert cmds[3].endswith("u32 match ip dst 10.244.1.2/32 flowid 1:3")
    assert "ip link add mlnd" in cmds[4] and cmds[-1].endswith("match ip src 10.244.1.2/32 "
                                                               "flowid 1:3")
    has_netem = lab.pod_shell(L2).run(["modinfo", "sch_netem"], check=False).ok
    if has_netem:  # a stock kernel: the qdisc goes on and comes off
        with active(fault, lab):
            assert fault.backend_used == "netem"
    else:  # this lab's kernel: "Specified qdisc kind is unknown", nothing left behind
        with pytest.raises(CommandError), active(fault, lab):
            pass


@pytest.mark.parametrize(("params", "message"), [
    ({"delay_ms": -1}, "delay_ms: must be a number >= 0"),
    ({"loss_pct": 101}, "loss_pct: must be a number in 0..100"),
    ({}, "delay_ms: give a delay or a loss"),
    ({"reorder_pct": 5, "loss_pct": 1}, "reorder_pct: needs a delay_ms"),
    ({"delay_ms": 5, "backend": "ebpf"}, "backend: must be one of auto, netem, nfqueue"),
    ({"delay_ms": 5, "peer_cidr": "10.0.0.0/33"}, "peer_cidr: not an IPv4 network"),
])
def test_bad_input_names_the_field(params, message):
    with pytest.raises(ConfigError, match=f"network-delay: {message}"):
        NetworkDelay(target=L2, **params)
