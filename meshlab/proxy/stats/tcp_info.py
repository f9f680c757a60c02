"""Linux ``struct tcp_info`` (``getsockopt(IPPROTO_TCP, TCP_INFO)``) parsed without ctypes.

The layout is ``linux/tcp.h`` of kernel 6.x (248 bytes up to ``tcpi_total_rto_time``, 6.7+).
Older kernels return a shorter prefix; fields beyond the returned length read as 0 and are
listed as missing in :attr:`TcpInfo.length`. Field names are the kernel's without ``tcpi_``
(kept for traceability to the header rather than renamed with unit suffixes); units:

- ``rto``, ``ato``, ``rtt``, ``rttvar``, ``rcv_rtt``, ``min_rtt``: microseconds.
- ``last_data_sent``/``last_data_recv``/``last_ack_recv``: milliseconds ago.
- ``pacing_rate``, ``max_pacing_rate``, ``delivery_rate``: bytes per second.
- ``snd_mss``, ``rcv_mss``, ``advmss``, ``notsent_bytes``, ``bytes_*``: bytes.
- ``snd_cwnd``, ``unacked``, ``lost``, ``total_retrans``, ``segs_*``: segments.

Consumers: :mod:`meshlab.proxy.stats.tcp_stats` (Envoy's tcp_stats transport socket, ENVOY.md §3).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, fields
from typing import Protocol

#: ``(name, struct code)`` in kernel order; every field is naturally aligned, so offsets are the
#: running sum. Byte 6 packs ``snd_wscale:4, rcv_wscale:4``; byte 7 two flag bit-fields.
_LAYOUT: tuple[tuple[str, str], ...] = (
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"),
    ("backoff", "B"), ("options", "B"), ("_wscale", "B"), ("_flags", "B"),
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"),
    ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"), ("snd_ssthresh", "I"),
    ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"), ("rcv_rtt", "I"),
    ("rcv_space", "I"), ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"),
    ("bytes_received", "Q"), ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"), ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"), ("bytes_sent", "Q"), ("bytes_retrans", "Q"),
    ("dsack_dups", "I"), ("reord_seen", "I"), ("rcv_ooopack", "I"), ("snd_wnd", "I"),
    ("rcv_wnd", "I"), ("rehash", "I"), ("total_rto", "H"), ("total_rto_recoveries", "H"),
    ("total_rto_time", "I"),
)


def _offsets() -> tuple[tuple[str, struct.Struct, int], ...]:
    out, offset = [], 0
    for name, code in _LAYOUT:
        st = struct.Struct("=" + code)
        out.append((name, st, offset))
        offset += st.size
    return tuple(out)


_FIELDS = _offsets()
#: Size of the full kernel 6.7+ structure.
TCP_INFO_SIZE = _FIELDS[-1][2] + _FIELDS[-1][1].size

#: ``tcpi_state`` values (``include/net/tcp_states.h``).
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """One ``TCP_INFO`` snapshot (see the module docstring for units).

    ``length`` is how many bytes the kernel returned; fields past it are 0.
    """

    length: int = 0
    state: int = 0
    ca_state: int = 0
    retransmits: int = 0
    probes: int = 0
    backoff: int = 0
    options: int = 0
    snd_wscale: int = 0
    rcv_wscale: int = 0
    rto: int = 0
    ato: int = 0
    snd_mss: int = 0
    rcv_mss: int = 0
    unacked: int = 0
    sacked: int = 0
    lost: int = 0
    retrans: int = 0
    fackets: int = 0
    last_data_sent: int = 0
    last_ack_sent: int = 0
    last_data_recv: int = 0
    last_ack_recv: int = 0
    pmtu: int = 0
    rcv_ssthresh: int = 0
    rtt: int = 0
    rttvar: int = 0
    snd_ssthresh: int = 0
    snd_cwnd: int = 0
    advmss: int = 0
    reordering: int = 0
    rcv_rtt: int = 0
    rcv_space: int = 0
    total_retrans: int = 0
    pacing_rate: int = 0
    max_pacing_rate: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0
    segs_out: int = 0
    segs_in: int = 0
    notsent_bytes: int = 0
    min_rtt: int = 0
    data_segs_in: int = 0
    data_segs_out: int = 0
    delivery_rate: int = 0
    busy_time: int = 0
    rwnd_limited: int = 0
    sndbuf_limited: int = 0
    delivered: int = 0
    delivered_ce: int = 0
    bytes_sent: int = 0
    bytes_retrans: int = 0
    dsack_dups: int = 0
    reord_seen: int = 0
    rcv_ooopack: int = 0
    snd_wnd: int = 0
    rcv_wnd: int = 0
    rehash: int = 0
    total_rto: int = 0
    total_rto_recoveries: int = 0
    total_rto_time: int = 0

    @property
    def state_name(self) -> str:
        """``ESTABLISHED``, ``FIN_WAIT2``… (``UNKNOWN(n)`` for other values)."""
        return TCP_STATES.get(self.state, f"UNKNOWN({self.state})")

    def __repr__(self) -> str:
        return (f"TcpInfo({self.state_name} rtt={self.rtt}us cwnd={self.snd_cwnd} "
                f"unacked={self.unacked} total_retrans={self.total_retrans} len={self.length})")


_KNOWN = frozenset(f.name for f in fields(TcpInfo))


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """Decode a ``TCP_INFO`` buffer (any length; missing trailing fields read as 0).

    Args:
        raw: bytes returned by ``getsockopt(IPPROTO_TCP, TCP_INFO, n)``.

    Returns:
        The snapshot; ``length`` is ``len(raw)``.
    """
    values: dict[str, int] = {"length": len(raw)}
    for name, st, offset in _FIELDS:
        if offset + st.size > len(raw):
            break
        (value,) = st.unpack_from(raw, offset)
        if name == "_wscale":
            values["snd_wscale"], values["rcv_wscale"] = value & 0x0F, value >> 4
        elif name in _KNOWN:
            values[name] = value
    return TcpInfo(**values)


class _HasGetsockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


def read_tcp_info(sock: _HasGetsockopt) -> TcpInfo:
    """``getsockopt(IPPROTO_TCP, TCP_INFO)`` on ``sock`` (a socket or asyncio TransportSocket).

    Raises:
        OSError: the socket is closed (EBADF) or not TCP.
    """
    return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE))
