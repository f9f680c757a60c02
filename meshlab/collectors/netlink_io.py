"""A netlink socket opened inside a lab network namespace and kept open across reads.

The collectors read sockets (``sock_diag``) and conntrack (``ctnetlink``) of a pod or node of
the local lab without spawning ``ip netns exec ss`` / ``conntrack`` each tick. A netlink socket
answers for the network namespace it was created in (``sock_net(sk)``), so the socket is made
by a short-lived thread that ``setns``'d into ``/run/netns/<name>``
(:func:`meshlab.envs.local.netns_socket.run_in_netns`); the runner's own threads never change
namespace, and every later dump through the socket reads that namespace only.

A socket also *pins* its namespace: after ``ip netns del`` the namespace and its devices live
on while the socket is open. So the socket is registered with
:func:`meshlab.envs.local.netns.hold_netns` (deleting the namespace closes it first), and every
dump first checks that ``/run/netns/<name>`` still names the namespace the socket was made in
(its nsfs inode): a missing name closes the socket and raises :class:`LabError` (a node
power-off: the sampler writes a gap line); a new inode (power-on recreated the name) reopens.

Wire format (``linux/netlink.h``): each message is a 16-byte ``nlmsghdr`` (length, type,
flags, sequence, port id) then its payload, padded to 4 bytes; a dump ends with
``NLMSG_DONE``; ``NLMSG_ERROR`` carries a negative errno.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable

from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR

from meshlab.envs.local.netns import NETNS_DIR, hold_netns
from meshlab.envs.local.netns_socket import run_in_netns
from meshlab.errors import LabError

NLMSG_HDR = struct.Struct("=IHHII")
"""``struct nlmsghdr``: length, type, flags, sequence number, port id (16 bytes)."""
RECV_BYTES = 1 << 18
"""Receive buffer per ``recv`` (a dump part is at most 32 KiB, ``netlink_dump``)."""
DEFAULT_TIMEOUT_S = 5.0


class NetnsNetlink:
    """One netlink socket of ``protocol`` inside netns ``netns``, opened on first use.

    Args:
        netns: a named namespace (``/run/netns/<netns>``), e.g. ``ml-lab-p-netshoot-0``.
        protocol: the netlink family (``NETLINK_SOCK_DIAG`` = 4, ``NETLINK_NETFILTER`` = 12).
        timeout_s: seconds a dump may wait for the kernel's next part.

    Thread-safe: dumps through one object run one at a time.
    """

    def __init__(self, netns: str, protocol: int, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.netns = netns
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.opened = 0
        """How many sockets were opened (1 for a namespace that never went away)."""
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._seq = 0
        self._unhold: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"NetnsNetlink(netns={self.netns!r}, protocol={self.protocol}, "
                f"open={self._sock is not None}, opened={self.opened})")

    @property
    def is_open(self) -> bool:
        """True while the socket is open (and pins its namespace)."""
        return self._sock is not None

    def _inode_now(self) -> int:
        try:
            return os.stat(NETNS_DIR / self.netns).st_ino
        except FileNotFoundError:
            raise LabError(f"network namespace {self.netns} is gone") from None

    def _open(self) -> None:
        for _ in range(3):  # the name may be re-bound while we create the socket
            before = self._inode_now()
            sock = run_in_netns(self.netns, lambda: socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, self.protocol))
            if self._inode_now() == before:
                break
            sock.close()
        else:
            raise LabError(f"network namespace {self.netns} keeps being replaced")
        sock.bind((0, 0))
        sock.settimeout(self.timeout_s)
        self._sock, self._inode = sock, before
        self._unhold = hold_netns(self.netns, self.close)
        self.opened += 1

    def _close_locked(self) -> None:
        if self._unhold is not None:
            self._unhold()
            self._unhold = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._inode = None

    def close(self) -> None:
        """Close the socket (idempotent; the next dump opens a new one)."""
        with self._lock:
            self._close_locked()

    def dump(self, request: bytes) -> list[tuple[int, bytes]]:
        """Send one dump request and collect the answer.

        Args:
            request: an encoded netlink message with ``NLM_F_DUMP`` (its sequence number is
                replaced by this socket's next one).

        Returns:
            ``[(message type, payload bytes)]`` in the kernel's order, ``NLMSG_DONE`` left out.

        Raises:
            LabError: the namespace is gone, the kernel answered an error, or a part did not
                arrive within ``timeout_s`` (the socket is closed and reopened next time).
        """
        with self._lock:
            try:
                if self._sock is not None and self._inode_now() != self._inode:
                    self._close_locked()  # power-on made a new namespace under the same name
                if self._sock is None:
                    self._open()
            except LabError:
                self._close_locked()  # a vanished namespace is released, not pinned
                raise
            assert self._sock is not None
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            msg = bytearray(request)
            struct.pack_into("=I", msg, 8, self._seq)
            try:
                self._sock.send(msg)
                return self._collect(self._sock, self._seq)
            except (OSError, LabError) as exc:
                gone = not (NETNS_DIR / self.netns).exists()
                self._close_locked()
                if gone:
                    raise LabError(f"network namespace {self.netns} is gone") from None
                if isinstance(exc, LabError):
                    raise
                raise LabError(f"netlink dump in {self.netns}: {exc}") from exc

    def _collect(self, sock: socket.socket, seq: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while True:
            data = sock.recv(RECV_BYTES)
            offset = 0
            while offset + NLMSG_HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = NLMSG_HDR.unpack_from(data, offset)
                if length < NLMSG_HDR.size:
                    raise LabError(f"netlink dump in {self.netns}: bad message length {length}")
                payload = data[offset + NLMSG_HDR.size:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # the rest of an earlier, abandoned dump
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload, 0)
                    if code == 0:
                        continue  # an acknowledgement
                    raise LabError(f"netlink dump in {self.netns}: "
                                   f"{os.strerror(-code)} (errno {-code})")
                out.append((mtype, payload))
