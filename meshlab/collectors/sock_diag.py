"""TCP socket snapshots over netlink ``sock_diag`` (``NETLINK_SOCK_DIAG``), as ``ss`` shows them.

The local lab's reader of :class:`~meshlab.collectors.sockets.SocketInfo` records: the same
kernel answer ``ss -Htanoie`` (iproute2 6.1) prints, turned into the *same* records that
:func:`~meshlab.collectors.sockets.parse_ss` makes of ss's text, without spawning ``ip netns
exec ss`` each tick. The rules below are ss's (``misc/ss.c``):

- states by ss's names (``sstate_name``): ``ESTAB``, ``SYN-SENT``, ``SYN-RECV``,
  ``FIN-WAIT-1``, ``FIN-WAIT-2``, ``TIME-WAIT``, ``UNCONN``, ``CLOSE-WAIT``, ``LAST-ACK``,
  ``LISTEN``, ``CLOSING``; Recv-Q/Send-Q are ``idiag_rqueue``/``idiag_wqueue`` (bytes; a
  listener's are its accept queue and backlog);
- addresses (``inet_addr_print``): IPv4 dotted, IPv6 in brackets, the IPv6 any-address ``*``
  unless the socket is v6-only, port 0 ``*``, a device-bound local address ``addr%dev``;
- ``uid`` only when not 0 (``sock_details_print``);
- the timer (``tcp_timer_print``) only when set: ``on`` (retransmit), ``keepalive``,
  ``timewait``, ``persist``; its expiry is printed in ms and rounded by ``print_ms_timer``
  (whole minutes above 1 min, whole seconds above 10 s, whole ms below) and read back the
  same way (:func:`ss_timer_ms`); the third number is ``idiag_retrans``;
- TCP_INFO (``tcp_show_info``; absent for TIME-WAIT and SYN-RECV): ``rto_ms`` =
  ``tcpi_rto``/1000 unless 0 or 3 s, ``rtt_ms`` = ``tcpi_rtt``/1000 unless 0, both as
  ``%g`` prints them (6 significant digits); ``retrans``/``retrans_total`` =
  ``tcpi_retrans``/``tcpi_total_retrans``; ``unacked``, ``lost``, ``bytes_sent``,
  ``bytes_retrans``, ``notsent_bytes``; ``lastsnd_ms``/``lastrcv_ms`` =
  ``tcpi_last_data_sent``/``_recv`` unless 0. A shorter ``tcp_info`` (older kernel) reads as
  zero-padded, like ss.

One difference, not visible in the records: ss sends one ``SOCK_DIAG_BY_FAMILY`` dump per
address family, which walks the kernel's host-wide TCP hash tables twice; this reader sends the
compatible ``TCPDIAG_GETSOCK`` request with family ``AF_UNSPEC`` (``inet_diag_dump_compat``),
one walk for both (≈ 2 ms of kernel time saved per read on a 262144-bucket table). Messages are
decoded with :mod:`struct` from the layouts pyroute2 declares (``inet_diag_msg``'s attribute
map and ``tcp_info`` fields): pyroute2's generic decoder costs ≈ 30-180 µs per socket, more than
the ``ss`` process it replaces once a pod has a few hundred sockets.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from functools import lru_cache

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_DUMP, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.diag import SS_ALL, inet_diag_msg

from meshlab.collectors.netlink_io import NetnsNetlink
from meshlab.collectors.sockets import SocketInfo
from meshlab.envs.local.netns_socket import run_in_netns

TCPDIAG_GETSOCK = 18
"""``linux/inet_diag.h``: the original TCP dump request (``struct inet_diag_req``)."""
INET_DIAG_INFO = next(i for i, (n, _) in enumerate(inet_diag_msg.nla_map)
                      if n == "INET_DIAG_INFO")
INET_DIAG_SKV6ONLY = next(i for i, (n, _) in enumerate(inet_diag_msg.nla_map)
                          if n == "INET_DIAG_SKV6ONLY")

STATE_NAMES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
               6: "TIME-WAIT", 7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
               11: "CLOSING"}
"""``idiag_state`` → ss's name (``sstate_name``; anything else is ``UNKNOWN``)."""
TIMER_NAMES = ("off", "on", "keepalive", "timewait", "persist", "unknown")
"""``idiag_timer`` → ss's name (values above 4 are ``unknown``)."""

_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
"""``struct inet_diag_msg`` (72 bytes): family, state, timer, retrans, sport, dport (big
endian), src, dst, if, cookie, expires (ms), rqueue, wqueue, uid, inode."""
_RTA = struct.Struct("=HH")

_TCP_INFO_FIELDS = inet_diag_msg.tcp_info.fields
_TCP_INFO_BYTES = struct.calcsize("=" + "".join(f for _, f in _TCP_INFO_FIELDS))


def _tcp_info_offsets() -> dict[str, tuple[int, str]]:
    offsets, at = {}, 0
    for name, fmt in _TCP_INFO_FIELDS:
        offsets[name] = (at, "=" + fmt)
        at += struct.calcsize("=" + fmt)
    return offsets


_TCPI = _tcp_info_offsets()
_TCPI_READ = tuple((name, *_TCPI[f"tcpi_{name}"]) for name in (
    "rto", "rtt", "retrans", "total_retrans", "unacked", "lost", "bytes_sent",
    "bytes_retrans", "notsent_bytes", "last_data_sent", "last_data_recv"))


class inet_diag_req_v1(nlmsg):
    """``struct inet_diag_req`` (``linux/inet_diag.h``) of the ``TCPDIAG_GETSOCK`` request."""

    fields = (("idiag_family", "B"), ("idiag_src_len", "B"), ("idiag_dst_len", "B"),
              ("idiag_ext", "B"), ("idiag_sport", ">H"), ("idiag_dport", ">H"),
              ("idiag_src", ">4I"), ("idiag_dst", ">4I"), ("idiag_if", "I"),
              ("idiag_cookie", "Q"), ("idiag_states", "I"), ("idiag_dbs", "I"))


@lru_cache(maxsize=1)
def dump_request() -> bytes:
    """The encoded request: every TCP socket of both families, all of ss's states (``SS_ALL``),
    with ``INET_DIAG_INFO`` (``tcp_info``), as ``ss -tai`` asks."""
    req = inet_diag_req_v1()
    req["header"]["type"] = TCPDIAG_GETSOCK
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["idiag_family"] = socket.AF_UNSPEC
    req["idiag_ext"] = 1 << (INET_DIAG_INFO - 1)
    req["idiag_states"] = SS_ALL
    req["idiag_src"] = req["idiag_dst"] = (0, 0, 0, 0)
    req.encode()
    return bytes(req.data)


def ss_timer_ms(expires_ms: int) -> float:
    """A timer's expiry as ``ss`` prints it (``print_ms_timer``) and
    :func:`~meshlab.collectors.sockets.parse_ss` reads it back, in ms: whole minutes (plus
    whole seconds up to 9 min) from 1 min, whole seconds from 10 s, exact below."""
    minutes, secs, msecs = expires_ms // 60000, expires_ms // 1000 % 60, expires_ms % 1000
    if minutes:
        return float(minutes * 60000 + (secs * 1000 if minutes <= 9 else 0))
    return float(secs * 1000 if secs > 9 else secs * 1000 + msecs)


def _g(value: float) -> float:
    """``value`` as C's ``%g`` prints it, read back."""
    return float(f"{value:g}")


def _address(family: int, raw: bytes, port: int, v6only: bool, ifname: str | None) -> str:
    if family == socket.AF_INET:
        host = socket.inet_ntop(socket.AF_INET, raw[:4])
    elif not v6only and raw == bytes(16):
        host = "*"
    else:
        host = f"[{socket.inet_ntop(socket.AF_INET6, raw)}]"
    if ifname:
        host = f"{host}%{ifname}"
    return f"{host}:{port or '*'}"


def parse_message(payload: bytes, ifname: Callable[[int], str] | None = None) -> SocketInfo:
    """One ``inet_diag_msg`` (with its attributes) as the record ss's line gives.

    Args:
        payload: the message after its ``nlmsghdr``.
        ifname: interface index → name in the socket's namespace (for device-bound sockets;
            default ``if<index>``, ss's fallback).

    Raises:
        struct.error: a truncated message.
    """
    (family, state, timer, retrans, sport, dport, src, dst, ifindex, _cookie, expires,
     rqueue, wqueue, uid, _inode) = _MSG.unpack_from(payload, 0)
    info, v6only = None, False
    at = _MSG.size
    while at + _RTA.size <= len(payload):
        length, rtype = _RTA.unpack_from(payload, at)
        if length < _RTA.size:
            break
        if rtype == INET_DIAG_INFO:
            info = payload[at + 4:at + length]
        elif rtype == INET_DIAG_SKV6ONLY and family == socket.AF_INET6:
            v6only = bool(payload[at + 4])
        at += (length + 3) & ~3
    name = (ifname or (lambda i: f"if{i}"))(ifindex) if ifindex else None
    sock = SocketInfo(
        state=STATE_NAMES.get(state, "UNKNOWN"), recv_q=rqueue, send_q=wqueue,
        local=_address(family, src, int.from_bytes(sport, "big"), v6only, name),
        peer=_address(family, dst, int.from_bytes(dport, "big"), v6only, None),
        uid=uid or None)
    if timer:
        sock.timer = TIMER_NAMES[min(timer, 5)]
        sock.timer_expires_ms, sock.timer_retrans = ss_timer_ms(expires), retrans
    if info is not None:
        _apply_tcp_info(sock, info)
    return sock


def _apply_tcp_info(sock: SocketInfo, info: bytes) -> None:
    if len(info) < _TCP_INFO_BYTES:
        info = info + bytes(_TCP_INFO_BYTES - len(info))
    v = {name: struct.unpack_from(fmt, info, at)[0] for name, at, fmt in _TCPI_READ}
    if v["rto"] and v["rto"] != 3000000:
        sock.rto_ms = _g(v["rto"] / 1000)
    if v["rtt"]:
        sock.rtt_ms = _g(v["rtt"] / 1000)
    sock.retrans, sock.retrans_total = v["retrans"], v["total_retrans"]
    sock.unacked, sock.lost = v["unacked"], v["lost"]
    sock.bytes_sent, sock.bytes_retrans = v["bytes_sent"], v["bytes_retrans"]
    sock.notsent_bytes = v["notsent_bytes"]
    sock.lastsnd_ms = v["last_data_sent"] or None
    sock.lastrcv_ms = v["last_data_recv"] or None


class SockDiagReader:
    """Every TCP socket of one network namespace per :meth:`snapshot`, over one ``sock_diag``
    netlink socket made inside it and kept open (:class:`NetnsNetlink`).

    Args:
        netns: the namespace, e.g. ``ml-lab-p-fortio-server-0``.
    """

    source = "sock_diag"
    """What the records come from (``ss`` for the argv reader)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.link = NetnsNetlink(netns, NETLINK_SOCK_DIAG)
        self._ifnames: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"SockDiagReader(netns={self.netns!r})"

    def _ifname(self, index: int) -> str:
        if index not in self._ifnames:
            try:
                self._ifnames[index] = run_in_netns(self.netns,
                                                    lambda: socket.if_indextoname(index))
            except OSError:
                return f"if{index}"
        return self._ifnames[index]

    def snapshot(self) -> list[SocketInfo]:
        """The namespace's TCP sockets now, as :func:`~meshlab.collectors.sockets.parse_ss`
        would parse ``ss -Htanoie``.

        Raises:
            LabError: the namespace is gone or the dump failed.
        """
        before = self.link.opened
        messages = self.link.dump(dump_request())
        if self.link.opened != before:
            self._ifnames.clear()  # a new namespace under the same name
        return [parse_message(payload, self._ifname) for _, payload in messages]

    def close(self) -> None:
        """Close the netlink socket (the next snapshot reopens it)."""
        self.link.close()
