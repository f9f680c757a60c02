"""Upstream HTTP/1.1 keep-alive connection pool, one idle list per endpoint (asyncio).

Rules:

- :meth:`ConnectionPool.acquire` reuses the most recently released idle connection of the
  endpoint (LIFO, like Envoy's HTTP/1 pool) after checking it is still open: a connection whose
  peer sent FIN or data while idle is closed and counted ``upstream_cx_destroy_remote``.
- A new connection increments ``upstream_cx_total``/``upstream_cx_active``; a failed connect
  increments ``upstream_cx_connect_fail`` (and ``upstream_cx_connect_timeout`` on timeout).
- Connect errors become :class:`ConnectFailure` carrying Envoy's reset reason and transport
  failure reason (``delayed connect error: Connection refused``).
- :meth:`ConnectionPool.release` keeps a connection only if both h11 sides are DONE (keep-alive).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections import deque

import h11

from meshlab.proxy.flags import ResetReason
from meshlab.proxy.metrics import ClusterStats
from meshlab.proxy.router import Address

READ_CHUNK = 65536


class ConnectFailure(Exception):
    """Connecting to an upstream failed.

    Args:
        reason: Envoy reset reason.
        transport_failure: ``%UPSTREAM_TRANSPORT_FAILURE_REASON%`` text (may be empty).
    """

    def __init__(self, reason: ResetReason, transport_failure: str = "") -> None:
        super().__init__(f"{reason.value}: {transport_failure}")
        self.reason = reason
        self.transport_failure = transport_failure


class UpstreamClosed(Exception):
    """The upstream closed or reset the connection while a request used it."""


class UpstreamProtocolError(Exception):
    """The upstream sent something h11 cannot parse."""


class UpstreamConnection:
    """One upstream TCP connection with its h11 client state."""

    def __init__(self, endpoint: Address, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, stats: ClusterStats) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.stats = stats
        self.codec = h11.Connection(h11.CLIENT)
        self.created_s = time.monotonic()
        self.requests = 0
        self.closed = False
        sockname = writer.get_extra_info("sockname")
        self.local_address: Address | None = (sockname[0], sockname[1]) if sockname else None

    def is_usable(self) -> bool:
        """Still open, nothing pending from the peer, and h11 ready for a new request."""
        if self.closed or self.writer.is_closing() or self.reader.at_eof():
            return False
        if self.reader._buffer:  # type: ignore[attr-defined]  # unexpected bytes while idle
            return False
        return self.codec.our_state is h11.IDLE and self.codec.their_state is h11.IDLE

    async def send(self, request: h11.Request, body: bytes) -> None:
        """Write a full request.

        Raises:
            UpstreamClosed: the write failed.
        """
        self.requests += 1
        data = self.codec.send(request)
        if body:
            data += self.codec.send(h11.Data(data=body))
        data += self.codec.send(h11.EndOfMessage())
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise UpstreamClosed(str(exc)) from None
        self.stats.upstream_cx_tx_bytes_total.inc(len(data))  # type: ignore[attr-defined]

    async def next_event(self) -> h11.Event:
        """The next h11 event from the upstream (Response, Data, EndOfMessage…).

        Raises:
            UpstreamClosed: EOF/reset before the response ended.
            UpstreamProtocolError: unparseable response.
        """
        while True:
            try:
                event = self.codec.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(str(exc)) from None
            if event is h11.NEED_DATA:
                try:
                    data = await self.reader.read(READ_CHUNK)
                except (ConnectionError, OSError) as exc:
                    raise UpstreamClosed(str(exc)) from None
                self.stats.upstream_cx_rx_bytes_total.inc(len(data))  # type: ignore[attr-defined]
                self.codec.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamClosed("connection closed")
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx: Envoy answers 100-continue itself
            return event

    def close(self, *, remote: bool = False) -> None:
        """Close the socket and update the destroy counters (idempotent)."""
        if self.closed:
            return
        self.closed = True
        s = self.stats
        s.upstream_cx_active.dec()
        s.upstream_cx_destroy.inc()  # type: ignore[attr-defined]
        (s.upstream_cx_destroy_remote if remote else s.upstream_cx_destroy_local).inc()  # type: ignore[attr-defined]
        s.upstream_cx_length_ms.record((time.monotonic() - self.created_s) * 1000)
        try:
            self.writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass

    def abort(self) -> None:
        """Close with RST (stream reset on HTTP/1 closes the connection)."""
        try:
            self.writer.transport.abort()
        except (ConnectionError, OSError, RuntimeError):
            pass
        self.close()

    def __repr__(self) -> str:
        return (f"UpstreamConnection({self.endpoint[0]}:{self.endpoint[1]} "
                f"local={self.local_address} requests={self.requests} closed={self.closed})")


def _transport_failure(exc: OSError) -> tuple[ResetReason, str]:
    code = exc.errno
    if code is None:
        return ResetReason.REMOTE_CONNECTION_FAILURE, str(exc)
    text = os.strerror(code)
    if code in (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EINVAL):
        return ResetReason.REMOTE_CONNECTION_FAILURE, f"immediate connect error: {text}"
    return ResetReason.REMOTE_CONNECTION_FAILURE, f"delayed connect error: {text}"


async def open_upstream(endpoint: Address, bind_ip: str | None, timeout_s: float, stats: ClusterStats
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``endpoint`` (optionally from ``bind_ip``), updating connect stats.

    Raises:
        ConnectFailure: refused, unreachable, bind failure or connect timeout.
    """
    stats.upstream_cx_total.inc()  # type: ignore[attr-defined]
    stats.upstream_cx_active.inc()
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if bind_ip:
            try:
                sock.bind((bind_ip, 0))
            except OSError as exc:
                raise ConnectFailure(ResetReason.LOCAL_CONNECTION_FAILURE,
                                     f"failed to bind to {bind_ip}:0: {os.strerror(exc.errno or 0)}"
                                     ) from None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, endpoint), timeout_s)
        except TimeoutError:
            stats.upstream_cx_connect_timeout.inc()  # type: ignore[attr-defined]
            raise ConnectFailure(ResetReason.CONNECTION_TIMEOUT) from None
        except OSError as exc:
            raise ConnectFailure(*_transport_failure(exc)) from None
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK * 4)
    except ConnectFailure:
        sock.close()
        stats.upstream_cx_connect_fail.inc()  # type: ignore[attr-defined]
        stats.upstream_cx_active.dec()
        raise
    except BaseException:
        sock.close()
        stats.upstream_cx_active.dec()
        raise
    stats.upstream_cx_connect_ms.record((time.monotonic() - start) * 1000)
    return reader, writer


class ConnectionPool:
    """Idle keep-alive connections keyed by (endpoint, bind ip)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[Address, str | None], deque[UpstreamConnection]] = {}
        self.reused = 0
        self.created = 0

    async def acquire(self, endpoint: Address, bind_ip: str | None, timeout_s: float,
                      stats: ClusterStats) -> tuple[UpstreamConnection, bool]:
        """A usable connection to ``endpoint`` and whether it was reused.

        Raises:
            ConnectFailure: a new connection could not be made.
        """
        idle = self._idle.get((endpoint, bind_ip))
        while idle:
            conn = idle.pop()
            if conn.is_usable():
                self.reused += 1
                return conn, True
            conn.close(remote=True)  # the upstream closed it while idle
        reader, writer = await open_upstream(endpoint, bind_ip, timeout_s, stats)
        stats.upstream_cx_http1_total.inc()  # type: ignore[attr-defined]
        self.created += 1
        return UpstreamConnection(endpoint, reader, writer, stats), False

    def release(self, conn: UpstreamConnection, bind_ip: str | None) -> None:
        """Return ``conn`` after a complete exchange; keeps it only if keep-alive is possible."""
        codec = conn.codec
        if conn.closed or codec.our_state is not h11.DONE or codec.their_state is not h11.DONE:
            conn.close(remote=codec.their_state is h11.CLOSED)
            return
        try:
            codec.start_next_cycle()
        except h11.LocalProtocolError:
            conn.close()
            return
        self._idle.setdefault((conn.endpoint, bind_ip), deque()).append(conn)

    def close_all(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"ConnectionPool(idle={idle}, created={self.created}, reused={self.reused})"
