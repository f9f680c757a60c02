"""Capture TCP segments on one interface of a named netns, dissected with scapy.

The capture socket is an ``AF_PACKET``/``ETH_P_ALL`` socket created inside the namespace
(:func:`~meshlab.envs.local.netns_socket.netns_socket`) and bound to the interface by name, so
nothing runs in (or looks at) the host namespace; frames are read by a thread and parsed with
scapy's ``Ether``. No BPF filter is compiled (that needs libpcap): frames are matched in Python,
which is cheap at a probe's handful of packets. Outgoing frames are seen too (``PACKET_OUTGOING``
taps, net/core/dev.c ``dev_queue_xmit_nit``, queued synchronously as the segment is sent), and
leaving the context drains what is queued, so a segment sent before ``__exit__`` is recorded.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from meshlab.envs.local.netns_socket import netns_socket

ETH_P_ALL = 0x0003
_READ_TIMEOUT_S = 0.05
_FRAME_BYTES = 65535


@dataclass(frozen=True)
class Segment:
    """One captured TCP segment.

    Attributes:
        t_s: capture time (``time.monotonic()`` seconds).
        src: ``ip:port`` of the sender.
        dst: ``ip:port`` of the receiver.
        flags: scapy's flag string, e.g. ``S``, ``SA``, ``A``, ``R``, ``FA``.
        seq: sequence number.
        ack: acknowledgment number.
    """

    t_s: float
    src: str
    dst: str
    flags: str
    seq: int
    ack: int

    def describe(self, t0_s: float) -> str:
        """One line, e.g. ``+1.2ms 10.0.0.1:40000 > 10.0.0.2:9000 S seq=1 ack=0``."""
        return (f"+{(self.t_s - t0_s) * 1000:.1f}ms {self.src} > {self.dst} {self.flags} "
                f"seq={self.seq} ack={self.ack}")


class TcpSniffer:
    """Record TCP segments to or from ``port`` on ``iface`` of ``netns`` while open.

    Args:
        netns: named network namespace.
        port: keep segments whose source or destination port is this one.
        iface: interface name inside ``netns``.

    Use as a context manager; :attr:`segments` holds what was captured, in order.

    Raises:
        LabError: the namespace cannot be entered (on ``__enter__``).
        OSError: the interface does not exist (on ``__enter__``).
    """

    def __init__(self, netns: str, port: int, iface: str = "eth0") -> None:
        self.netns = netns
        self.port = port
        self.iface = iface
        self.segments: list[Segment] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"TcpSniffer(netns={self.netns!r}, iface={self.iface!r}, port={self.port}, "
                f"segments={len(self.segments)})")

    def __enter__(self) -> Self:
        sock = netns_socket(self.netns, socket.AF_PACKET, socket.SOCK_RAW)
        try:
            sock.bind((self.iface, ETH_P_ALL))
        except OSError:
            sock.close()
            raise
        sock.settimeout(_READ_TIMEOUT_S)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name=f"sniff-{self.netns}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()

    def _read(self) -> None:
        assert self._sock is not None
        while True:  # after stop, keep reading until the queue stays empty for one timeout
            stopping = self._stop.is_set()
            try:
                frame = self._sock.recv(_FRAME_BYTES)
            except TimeoutError:
                if stopping:
                    return
                continue
            except OSError:
                return
            seg = self._parse(frame, time.monotonic())
            if seg is not None:
                self.segments.append(seg)

    def _parse(self, frame: bytes, t_s: float) -> Segment | None:
        pkt = Ether(frame)
        if IP not in pkt or TCP not in pkt:
            return None
        ip, tcp = pkt[IP], pkt[TCP]
        if self.port not in (tcp.sport, tcp.dport):
            return None
        return Segment(t_s=t_s, src=f"{ip.src}:{tcp.sport}", dst=f"{ip.dst}:{tcp.dport}",
                       flags=str(tcp.flags), seq=int(tcp.seq), ack=int(tcp.ack))
