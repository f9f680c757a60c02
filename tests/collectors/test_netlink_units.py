"""The netlink decoders without a lab: ss's timer rounding and address rules on built
``inet_diag_msg`` bytes, a built ``ctnetlink`` message, and the sampler's choice of readers by
the env's ``kernel_reads``."""

from __future__ import annotations

import socket
import struct
from types import SimpleNamespace

import pytest

from meshlab.collectors.conntrack import ConntrackCommand, ConntrackEntry
from meshlab.collectors.ctnetlink import CtnetlinkReader
from meshlab.collectors.ctnetlink import parse_message as parse_ct
from meshlab.collectors.sampler import kernel_readers
from meshlab.collectors.sock_diag import SockDiagReader, parse_message, ss_timer_ms
from meshlab.collectors.sockets import SsReader, parse_ss
from meshlab.envs.kube.env import KubeEnv
from meshlab.envs.local.lab import LocalEnv


def print_ms_timer(timeout: int) -> str:
    """iproute2 6.1 ``misc/ss.c`` ``print_ms_timer``, transcribed."""
    secs, msecs = timeout // 1000, timeout % 1000
    minutes, secs = secs // 60, secs % 60
    buf = ""
    if minutes:
        msecs = 0
        buf = f"{minutes}min"
        if minutes > 9:
            secs = 0
    if secs:
        if secs > 9:
            msecs = 0
        buf += f"{secs}{'.' if msecs else 'sec'}"
    if msecs:
        buf += f"{msecs:03d}ms"
    return buf


@pytest.mark.parametrize("ms", [0, 7, 40, 999, 1000, 4960, 9999, 10000, 12345, 59999, 60000,
                                 61500, 599999, 600000, 7199999, 7200000])
def test_timer_expiry_is_what_parse_ss_reads_from_ss(ms):
    line = f"ESTAB 0 0 10.0.0.1:1 10.0.0.2:2 timer:(keepalive,{print_ms_timer(ms)},0)"
    assert parse_ss(line)[0].timer_expires_ms == ss_timer_ms(ms)


def diag_msg(family: int, state: int, src: bytes, sport: int, dst: bytes, dport: int, *,
             timer: int = 0, expires: int = 0, retrans: int = 0, uid: int = 0,
             attrs: list[tuple[int, bytes]] = ()) -> bytes:
    head = struct.pack("=BBBB", family, state, timer, retrans) + struct.pack(
        ">HH", sport, dport) + src.ljust(16, b"\0") + dst.ljust(16, b"\0") + struct.pack(
        "=I8sIIIII", 0, b"\0" * 8, expires, 3, 4, uid, 99)
    for atype, payload in attrs:
        head += struct.pack("=HH", 4 + len(payload), atype) + payload
        head += b"\0" * (-len(head) % 4)
    return head


def test_inet_diag_message_reads_like_ss_prints_it():
    v4 = socket.inet_aton
    info = bytearray(232)
    struct.pack_into("=I", info, 8, 204000)      # tcpi_rto µs
    struct.pack_into("=I", info, 68, 1234567)    # tcpi_rtt µs
    struct.pack_into("=I", info, 24, 2)          # unacked
    struct.pack_into("=II", info, 36, 1, 0)      # retrans (fackets after)
    struct.pack_into("=I", info, 100, 7)         # total_retrans
    struct.pack_into("=I", info, 44, 15)         # last_data_sent
    sock = parse_message(diag_msg(socket.AF_INET, 1, v4("10.0.0.1"), 80, v4("10.0.0.2"), 5000,
                                  timer=1, expires=204, retrans=1, uid=1337,
                                  attrs=[(2, bytes(info))]))
    assert (sock.state, sock.local, sock.peer, sock.recv_q, sock.send_q, sock.uid) == (
        "ESTAB", "10.0.0.1:80", "10.0.0.2:5000", 3, 4, 1337)
    assert (sock.timer, sock.timer_expires_ms, sock.timer_retrans) == ("on", 204.0, 1)
    assert (sock.rto_ms, sock.rtt_ms, sock.unacked, sock.retrans, sock.retrans_total) == (
        204.0, 1234.57, 2, 1, 7)  # %g: 6 significant digits
    assert (sock.lastsnd_ms, sock.lastrcv_ms) == (15, None)

    short = bytearray(104)  # an old kernel's shorter tcp_info, rto 3 s: not printed by ss
    struct.pack_into("=I", short, 8, 3000000)
    listen = parse_message(diag_msg(socket.AF_INET6, 10, b"", 8080, b"", 0,
                                    attrs=[(11, b"\0"), (2, bytes(short))]))
    assert (listen.state, listen.local, listen.peer, listen.uid, listen.rto_ms) == (
        "LISTEN", "*:8080", "*:*", None, None)
    v6only = parse_message(diag_msg(socket.AF_INET6, 10, b"", 8080, b"", 0, attrs=[(11, b"\1")]))
    assert (v6only.local, v6only.peer) == ("[::]:8080", "[::]:*")
    tw = parse_message(diag_msg(socket.AF_INET6, 6, socket.inet_pton(socket.AF_INET6, "fd00::1"),
                                443, socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.9"), 999,
                                timer=3, expires=59000),
                       ifname=lambda i: f"x{i}")
    assert (tw.state, tw.local, tw.peer, tw.timer, tw.timer_expires_ms) == (
        "TIME-WAIT", "[fd00::1]:443", "[::ffff:10.0.0.9]:999", "timewait", 59000.0)


def nla(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def test_ctnetlink_message_reads_like_conntrack_prints_it():
    ip = nla(1, socket.inet_aton("10.244.1.3")) + nla(2, socket.inet_aton("10.96.0.12"))
    proto = nla(1, b"\x06") + nla(2, struct.pack(">H", 40000)) + nla(3, struct.pack(">H", 8070))
    orig = nla(1 | 0x8000, ip) + nla(2 | 0x8000, proto)
    tcp = nla(1 | 0x8000, nla(1, b"\x03"))  # CTA_PROTOINFO_TCP { STATE = ESTABLISHED }
    msg = b"\x02\x00\x00\x00" + nla(1 | 0x8000, orig) + nla(3, struct.pack(">I", 0x0E)) + \
        nla(4 | 0x8000, tcp) + nla(7, struct.pack(">I", 431999))
    assert parse_ct(msg) == ConntrackEntry(
        protocol="tcp", timeout_s=431999, state="ESTABLISHED", src="10.244.1.3",
        dst="10.96.0.12", sport=40000, dport=8070, flags=("ASSURED",))
    icmp = b"\x02\x00\x00\x00" + nla(1 | 0x8000, nla(1 | 0x8000, ip) + nla(
        2 | 0x8000, nla(1, b"\x01"))) + nla(3, struct.pack(">I", 0x08)) + nla(
        7, struct.pack(">I", 29))
    assert parse_ct(icmp) == ConntrackEntry(protocol="icmp", timeout_s=29, src="10.244.1.3",
                                            dst="10.96.0.12", flags=("UNREPLIED",))
    assert parse_ct(b"\x02\x00\x00\x00" + nla(3, struct.pack(">I", 0))) is None  # no timeout


def test_readers_are_chosen_by_the_envs_kernel_reads():
    assert LocalEnv.kernel_reads == "netlink" and KubeEnv.kernel_reads == "shell"
    shells = SimpleNamespace(pod_shell=lambda n: f"pod:{n}", node_shell=lambda n: f"node:{n}")
    sock, ct = kernel_readers(shells, "pod", "p")  # no kernel_reads: shells
    assert isinstance(sock, SsReader) and isinstance(ct, ConntrackCommand)
    assert (sock.shell, ct.shell) == ("pod:p", "pod:p")
    assert kernel_readers(shells, "node", "n")[1].shell == "node:n"
    local = SimpleNamespace(kernel_reads="netlink", netns_of=lambda kind, n: f"ml-x-{kind}-{n}")
    sock, ct = kernel_readers(local, "node", "n0")
    assert isinstance(sock, SockDiagReader) and isinstance(ct, CtnetlinkReader)
    assert ct.netns == "ml-x-node-n0" and not ct.link.is_open  # opened on first read
