"""The netlink readers against ``ss`` and ``conntrack -L`` on the real base lab (lab ``colnl``).

For every pod and node namespace, the ``sock_diag`` reader must give the records
:func:`parse_ss` makes of ``ss -Htanoie`` at the same moment, and the ``ctnetlink`` reader the
entries :func:`parse_conntrack` makes of ``conntrack -L``. The lab is held still while comparing:
a kept-alive connection from the netshoot pod through both sidecars stays open and idle, the
listeners do not change, and the two reads are repeated until they agree (a read in between two
kernel events may see one side of it). Only what moves by itself is left out of the comparison:
``lastsnd``/``lastrcv`` (ms since) and the timers' remaining time (checked to within 2 s), and
conntrack's seconds left (to within 2 s).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import threading
from collections import Counter
from typing import Any

import pytest

from meshlab.collectors import conntrack, sockets
from meshlab.collectors.ctnetlink import CtnetlinkReader
from meshlab.collectors.sampler import Sampler
from meshlab.collectors.sock_diag import SockDiagReader
from meshlab.envs.idle import policy_of
from meshlab.envs.local.netns_socket import netns_connect, run_in_netns
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "colnl"
CLIENT, L1 = "netshoot-0", "fortio-server-0"
SOCKET_CLOCKS = ("lastsnd_ms", "lastrcv_ms", "timer_expires_ms")


@pytest.fixture(scope="module")
def env(running_lab):
    with running_lab(LAB) as lab:
        yield lab


def _namespaces(env) -> list[tuple[str, str]]:
    return ([("pod", p.name) for p in env.pods()] + [("node", n) for n in env.plan.nodes])


def _keep_alive_connection(env) -> socket.socket:
    """An HTTP/1.1 connection from the client pod to L1's service, one request answered and
    the connection left open (L1's sidecar keeps its upstream connection to L2 too)."""
    l1 = env.pod(L1).ip
    sock = netns_connect(env.netns_of("pod", CLIENT), l1, 8070, 5.0)
    sock.sendall(b"GET /echo?size=10 HTTP/1.1\r\nHost: fortio-server:8070\r\n\r\n")
    wait_until(lambda: sock.recv(65536), lambda got: b"\r\n\r\n" in got, timeout_s=10,
               what="the keep-alive response")
    return sock


def _short_udp_and_icmp(env) -> None:
    """A UDP datagram and an ICMP echo from the client pod to L2 (through both nodes'
    conntrack): entries of a stateless protocol and ``[UNREPLIED]`` ones."""
    l2 = env.pod("fortio-server-l2-0").ip

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (l2, 9))
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp:
            body = struct.pack("!BBHHH", 8, 0, 0, 0x4D4C, 1) + b"meshlab!"  # even length
            csum = sum(struct.unpack(f"!{len(body) // 2}H", body))
            csum = ~((csum >> 16) + (csum & 0xFFFF)) & 0xFFFF
            icmp.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (l2, 0))

    run_in_netns(env.netns_of("pod", CLIENT), send)


def _socket_keys(socks: list[sockets.SocketInfo]) -> Counter:
    return Counter(repr(dataclasses.replace(s, **dict.fromkeys(SOCKET_CLOCKS))) for s in socks)


def _entry_keys(entries: list[conntrack.ConntrackEntry]) -> Counter:
    return Counter(repr(dataclasses.replace(e, timeout_s=0)) for e in entries)


def _timers_agree(nl: list, ss: list, tolerance_ms: int = 2000) -> bool:
    """A socket's timer (keepalive, retransmit) can be re-armed between the two reads."""
    by_key = {(s.state, s.local, s.peer): s for s in ss}
    for s in nl:
        twin = by_key[(s.state, s.local, s.peer)]
        if s.timer_expires_ms is not None and (
                twin.timer_expires_ms is None
                or abs(s.timer_expires_ms - twin.timer_expires_ms) > tolerance_ms):
            return False
    return True


def _timeouts_agree(nl: list[conntrack.ConntrackEntry], ct: list[conntrack.ConntrackEntry],
                    tolerance_s: int = 2) -> bool:
    timeouts = {repr(dataclasses.replace(e, timeout_s=0)): e.timeout_s for e in ct}
    return all(abs(e.timeout_s - timeouts[repr(dataclasses.replace(e, timeout_s=0))])
               <= tolerance_s for e in nl)


def _both(read_netlink, read_text, keys) -> tuple[Any, Any, Counter, Counter]:
    a, b = read_netlink(), read_text()
    return a, b, keys(a), keys(b)


def test_sock_diag_gives_what_ss_prints(env):
    readers = {name: (SockDiagReader(env.netns_of(kind, name)), env.pod_shell(name))
               for kind, name in _namespaces(env) if kind == "pod"}
    with _keep_alive_connection(env):
        for name, (reader, shell) in readers.items():
            nl, _, _, _ = wait_until(
                lambda r=reader, s=shell: _both(r.snapshot, lambda: sockets.snapshot(s),
                                                _socket_keys),
                lambda got: got[2] == got[3] and _timers_agree(got[0], got[1]),
                timeout_s=20, what=f"{name}: netlink == ss")
            print(f"\n{name}: {len(nl)} sockets {sockets.count_by_state(nl)}")
            if name == L1:  # the sidecar's listeners, its kept-alive inbound and upstream
                states = sockets.count_by_state(nl)
                assert states["LISTEN"] >= 5 and states.get("ESTAB", 0) >= 2
                assert any(s.uid == 1337 and s.rtt_ms for s in nl)
        for reader, _ in readers.values():
            reader.close()
            assert not reader.link.is_open


def test_ctnetlink_gives_what_conntrack_prints(env):
    with _keep_alive_connection(env):
        _short_udp_and_icmp(env)
        seen: set[str] = set()
        for kind, name in _namespaces(env):
            reader = CtnetlinkReader(env.netns_of(kind, name))
            shell = env.pod_shell(name) if kind == "pod" else env.node_shell(name)
            # An ESTABLISHED entry's timeout drops to 300 s while data is unacknowledged
            # (nf_conntrack_tcp_timeout_unacknowledged), so both reads must see one moment:
            # poll until the entries and their timeouts agree.
            nl, _, _, _ = wait_until(
                lambda r=reader, s=shell: _both(r.snapshot, lambda: conntrack.snapshot(s),
                                                _entry_keys),
                lambda got: got[2] == got[3] and _timeouts_agree(got[0], got[1]),
                timeout_s=20, what=f"{name}: netlink == conntrack")
            seen |= {e.state_key for e in nl} | {f for e in nl for f in e.flags}
            print(f"\n{name}: {conntrack.aggregate(nl)}")
            reader.close()
    assert {"ESTABLISHED", "udp", "icmp", "UNREPLIED", "ASSURED"} <= seen


def test_sampler_reads_over_netlink_at_idle_priority(env, tmp_path):
    sampler = Sampler(env, tmp_path, interval_s=0.5)
    kernel = [t for t in sampler.targets if t.series in ("sockets", "conntrack")]
    assert {t.reader.source for t in kernel} == {"sock_diag", "ctnetlink"}
    with sampler:
        wait_until(lambda: dict(sampler.samples), lambda got: got.get("sockets", 0) >= 6
                   and got.get("conntrack", 0) >= 10, timeout_s=20, what="kernel samples")
        threads = {t.name: t.native_id for t in threading.enumerate()
                   if t.name == "collectors" or t.name.startswith("collector_")}
        assert "collectors" in threads and len(threads) >= 2
        policies = {name: policy_of(os.getpid(), tid) for name, tid in threads.items()}
        print(f"\nsampler threads: {policies}")
        assert set(policies.values()) == {"SCHED_IDLE"}
        assert set(sampler.priorities.values()) == {"idle"}
    assert sampler.summary()["gaps"]["sockets"] == 0 == sampler.summary()["gaps"]["conntrack"]
    assert not any(t.reader.link.is_open for t in kernel)  # closed by stop()
