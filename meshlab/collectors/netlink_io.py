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

A socket made with ``groups`` is also subscribed to those multicast groups (bound with the
group bits, before any dump, so no event between the subscription and a dump is missed): event
messages (sequence number 0; the port id is the sender's, e.g. ``conntrack -D``'s) that arrive while a dump is being collected are kept and
handed out by the next :meth:`NetnsNetlink.drain` with the ones still queued, in the kernel's
order. When the socket's receive buffer overflowed the kernel drops events and reports
``ENOBUFS`` once; ``drain`` then says events were lost.

Wire format (``linux/netlink.h``): each message is a 16-byte ``nlmsghdr`` (length, type,
flags, sequence, port id) then its payload, padded to 4 bytes; a dump ends with
``NLMSG_DONE``; ``NLMSG_ERROR`` carries a negative errno (0: an acknowledgement).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR

from meshlab.envs.local.netns import NETNS_DIR, hold_netns
from meshlab.envs.local.netns_socket import run_in_netns
from meshlab.errors import LabError

NLMSG_HDR = struct.Struct("=IHHII")
"""``struct nlmsghdr``: length, type, flags, sequence number, port id (16 bytes)."""
RECV_BYTES = 1 << 18
"""Receive buffer per ``recv`` (a dump part is at most 32 KiB, ``netlink_dump``)."""
DEFAULT_TIMEOUT_S = 5.0
SO_RCVBUFFORCE = 33
"""``asm-generic/socket.h``: set the receive buffer above ``rmem_max`` (``CAP_NET_ADMIN``)."""

Message = tuple[int, bytes]
"""``(nlmsg_type, payload bytes)`` of one netlink message."""


class NetnsNetlink:
    """One netlink socket of ``protocol`` inside netns ``netns``, opened on first use.

    Args:
        netns: a named namespace (``/run/netns/<netns>``), e.g. ``ml-lab-p-netshoot-0``.
        protocol: the netlink family (``NETLINK_SOCK_DIAG`` = 4, ``NETLINK_NETFILTER`` = 12).
        timeout_s: seconds a dump may wait for the kernel's next part.
        groups: multicast group bits to subscribe (``nl_groups``), 0 for none.
        rcvbuf_bytes: receive buffer asked for (``SO_RCVBUFFORCE``; the kernel doubles it),
            None for the default.

    Thread-safe: dumps and drains through one object run one at a time.
    """

    def __init__(self, netns: str, protocol: int, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 groups: int = 0, rcvbuf_bytes: int | None = None) -> None:
        self.netns = netns
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.groups = groups
        self.rcvbuf_bytes = rcvbuf_bytes
        self.opened = 0
        """How many sockets were opened (1 for a namespace that never went away)."""
        self._events: list[Message] = []
        self._lost = False
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._seq = 0
        self._unhold: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"NetnsNetlink(netns={self.netns!r}, protocol={self.protocol}, "
                f"groups={self.groups:#x}, open={self._sock is not None}, "
                f"opened={self.opened})")

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
        if self.rcvbuf_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf_bytes)
        sock.bind((0, self.groups))  # subscribed from here on
        sock.settimeout(self.timeout_s)
        self._events, self._lost = [], False
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
        self._events, self._lost = [], False

    def close(self) -> None:
        """Close the socket (idempotent; the next dump opens a new one)."""
        with self._lock:
            self._close_locked()

    def _ensure_open_locked(self) -> socket.socket:
        """The open socket of the namespace now (reopened after a re-creation).

        Raises:
            LabError: the namespace is gone (the old socket is closed, not pinned).
        """
        try:
            if self._sock is not None and self._inode_now() != self._inode:
                self._close_locked()  # power-on made a new namespace under the same name
            if self._sock is None:
                self._open()
        except LabError:
            self._close_locked()
            raise
        assert self._sock is not None
        return self._sock

    def _failed(self, exc: Exception, what: str) -> LabError:
        """Close the socket after ``exc`` and say why (a vanished namespace first)."""
        gone = not (NETNS_DIR / self.netns).exists()
        self._close_locked()
        if gone:
            return LabError(f"network namespace {self.netns} is gone")
        if isinstance(exc, LabError):
            return exc
        return LabError(f"netlink {what} in {self.netns}: {exc}")

    def dump(self, request: bytes) -> list[Message]:
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
        return self._exchange(request, dump=True)

    def get(self, request: bytes) -> Message | None:
        """Send one request that is answered by a single message (no ``NLM_F_DUMP``).

        Args:
            request: an encoded netlink request (its sequence number is replaced).

        Returns:
            The answer, or None when the kernel answered ``ENOENT`` (no such object).

        Raises:
            LabError: like :meth:`dump`, for any other error.
        """
        try:
            answer = self._exchange(request, dump=False)
        except _Missing:
            return None
        return answer[0] if answer else None

    def _exchange(self, request: bytes, *, dump: bool) -> list[Message]:
        with self._lock:
            sock = self._ensure_open_locked()
            self._seq = self._seq % 0xFFFFFFFF + 1  # never 0: events carry 0
            msg = bytearray(request)
            struct.pack_into("=I", msg, 8, self._seq)
            try:
                sock.send(msg)
                return self._collect(sock, self._seq, dump)
            except (OSError, LabError) as exc:
                raise self._failed(exc, "dump" if dump else "request") from exc

    def drain(self) -> tuple[list[Message], bool]:
        """The subscribed groups' messages received since the last drain, without blocking.

        Opens the socket (subscribing) when it is not open, so the first drain after an open
        returns nothing: the caller then needs a dump for the state so far.

        Returns:
            ``([(message type, payload)], lost)``: the events in the kernel's order, and True
            when the kernel reported ``ENOBUFS`` since the last drain (events were dropped).

        Raises:
            LabError: the namespace is gone or the socket failed (it is closed).
        """
        with self._lock:
            sock = self._ensure_open_locked()
            sock.setblocking(False)  # a timeout socket would wait in poll() first
            try:
                while True:
                    try:
                        data = sock.recv(RECV_BYTES)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno != errno.ENOBUFS:
                            raise
                        self._lost = True
                        continue
                    for seq, _pid, mtype, payload in self._messages(data):
                        if seq == 0:
                            self._events.append((mtype, payload))
            except (OSError, LabError) as exc:
                raise self._failed(exc, "events") from exc
            finally:
                if self._sock is not None:
                    self._sock.settimeout(self.timeout_s)
            events, lost = self._events, self._lost
            self._events, self._lost = [], False
            return events, lost

    def _messages(self, data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
        """``(sequence, port id, type, payload)`` of each message in one datagram."""
        offset = 0
        while offset + NLMSG_HDR.size <= len(data):
            length, mtype, _flags, mseq, pid = NLMSG_HDR.unpack_from(data, offset)
            if length < NLMSG_HDR.size:
                raise LabError(f"netlink in {self.netns}: bad message length {length}")
            yield mseq, pid, mtype, data[offset + NLMSG_HDR.size:offset + length]
            offset += (length + 3) & ~3

    def _collect(self, sock: socket.socket, seq: int, dump: bool) -> list[Message]:
        out: list[Message] = []
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS or not self.groups:
                    raise
                self._lost = True  # events were dropped; the answer goes on
                continue
            for mseq, _pid, mtype, payload in self._messages(data):
                if mseq != seq:
                    if self.groups and mseq == 0:
                        self._events.append((mtype, payload))  # for the next drain
                    continue  # else the rest of an earlier, abandoned request
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload, 0)
                    if code == 0:
                        if dump:
                            continue  # an acknowledgement
                        return out
                    if code == -errno.ENOENT and not dump:
                        raise _Missing
                    raise LabError(f"netlink {'dump' if dump else 'request'} in {self.netns}: "
                                   f"{os.strerror(-code)} (errno {-code})")
                out.append((mtype, payload))
                if not dump:
                    return out


class _Missing(Exception):
    """The kernel answered ``ENOENT`` to a single-object request."""
