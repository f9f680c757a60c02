"""One upstream TCP connection: connecting with Envoy's stats and failure reasons, and the HTTP/1.1
client connection as an asyncio Protocol (ENVOY.md §1, §8).

- :func:`connect_socket` makes the socket: the cluster's socket options and keepalive before
  connect (:mod:`~meshlab.proxy.upstream.sockopts`), an optional source address, the connect
  timeout. It charges ``upstream_cx_total``/``upstream_cx_active`` and, on failure,
  ``upstream_cx_connect_fail`` (plus ``upstream_cx_connect_timeout``), raising
  :class:`ConnectFailure` with Envoy's reset reason and transport failure reason
  (``delayed connect error: Connection refused``).
- :class:`UpstreamConnection` is the HTTP client side: bytes from the socket go straight into a
  :class:`~meshlab.proxy.upstream.codec.ResponseParser` (httptools callbacks); the stream that
  uses the connection is woken through :attr:`UpstreamConnection.waker` and takes the events
  with :meth:`UpstreamConnection.poll_event`. No task and no stream object per request.
- :func:`open_tcp` gives the TCP proxy the same socket with its relay protocol.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import h11

from meshlab.proxy.config.policy import DEFAULT_CLUSTER_POLICY, ClusterPolicy
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.stats.metrics import ClusterStats
from meshlab.proxy.stats.tcp_stats import watch_upstream
from meshlab.proxy.upstream import sockopts
from meshlab.proxy.upstream.codec import (
    ResponseParser,
    UpstreamClosed,
    UpstreamProtocolError,
    encode_request,
)
from meshlab.proxy.upstream.router import Address

#: Read size unit: the downstream inbox and codec limits are multiples of it.
READ_CHUNK = 65536

__all__ = ["READ_CHUNK", "ConnectFailure", "UpstreamClosed", "UpstreamConnection",
           "UpstreamProtocolError", "connect_socket", "open_http", "open_tcp"]


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


def _noop() -> None:
    pass


class UpstreamConnection(asyncio.Protocol):
    """One upstream HTTP/1.1 connection (client side; see the module rules).

    Attributes:
        endpoint: ``(ip, port)`` of the upstream host.
        stats: the cluster's stats.
        requests: requests sent on it so far.
        closed: :meth:`close` ran.
        rq_open: a request stream is active (host ``rq_active``, ``*_with_active_rq``).
        peer_closed: the upstream ended the connection while a request used it.
        eof: the upstream closed or reset the connection (at any time).
        waker: called whenever an event or an error arrives (the stream using it).
        idle_timer: the pool ``idle_timeout`` timer while pooled.
        limits, limits_rq: the circuit breakers counting it; whether it holds a request slot.
    """

    def __init__(self, endpoint: Address, stats: ClusterStats) -> None:
        self.endpoint = endpoint
        self.stats = stats
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.created_s = time.monotonic()
        self.requests = 0
        self.closed = False
        self.rq_open = False
        self.peer_closed = False
        self.eof = False
        self.error: UpstreamClosed | UpstreamProtocolError | None = None
        self.waker: Callable[[], None] = _noop
        self.idle_timer: asyncio.TimerHandle | None = None
        self.limits: Any = None  # ClusterResources (circuit breakers)
        self.limits_rq = False
        self.reading_paused = False  # downstream flow control holds its reading
        self.local_address: Address | None = None
        self._rx = stats.upstream_cx_rx_bytes_total  # type: ignore[attr-defined]
        self._tx = stats.upstream_cx_tx_bytes_total  # type: ignore[attr-defined]

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.local_address = (sockname[0], sockname[1]) if sockname else None

    def data_received(self, data: bytes) -> None:
        self._rx.inc(len(data))
        try:
            self.parser.feed(data)
        except (UpstreamClosed, UpstreamProtocolError) as exc:
            self.error = self.error or exc
        self.waker()

    def eof_received(self) -> bool:
        self._lost(None)
        return False  # HTTP: the connection is over; asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        if self.eof:
            return
        self.eof = True
        if self.closed:
            return
        if self.parser.in_response:
            self.peer_closed = True
        try:
            self.parser.feed(b"")
        except UpstreamClosed as err:
            self.error = self.error or (UpstreamClosed(str(exc)) if exc else err)
        self.waker()

    # -- used by the stream and the pool --------------------------------------------------------

    def is_usable(self) -> bool:
        """Open, nothing pending from the peer, keep-alive allowed, no response in flight."""
        parser = self.parser
        return (not self.closed and not self.eof and self.error is None and parser.keep_alive
                and not parser.in_response and not parser.events)

    def send(self, request: Any, body: bytes) -> None:
        """Write a whole request (``request``: method, target, headers; see
        :func:`~meshlab.proxy.upstream.codec.encode_request`).

        Raises:
            UpstreamClosed: the connection is already gone.
        """
        self.requests += 1
        hs = self.stats.host(self.endpoint)
        hs.rq_total += 1
        hs.rq_active += 1
        self.rq_open = True
        self.parser.expect(request.method)
        transport = self.transport
        if transport is None or transport.is_closing() or self.eof:
            self.peer_closed = True
            raise UpstreamClosed("connection closed")
        data = encode_request(request, body)
        transport.write(data)
        self._tx.inc(len(data))

    def poll_event(self) -> object:
        """The next response event already parsed, or ``h11.NEED_DATA``.

        Raises:
            UpstreamClosed: EOF or reset before the response ended.
            UpstreamProtocolError: the upstream sent something unparseable.
        """
        events = self.parser.events
        if events:
            return events.popleft()
        if self.error is not None:
            raise self.error
        return h11.NEED_DATA

    def close(self, *, remote: bool = False) -> None:
        """Close the socket and update the destroy counters (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.waker = _noop
        self.stats.connection_closed(self.endpoint, remote=remote or self.peer_closed,
                                     with_active_rq=self.rq_open,
                                     length_ms=(time.monotonic() - self.created_s) * 1000)
        self.end_request()
        if self.limits is not None:
            self.limits.connection_closed(self)
        if self.transport is not None:
            self.transport.close()

    def end_request(self) -> None:
        """The request stream on this connection ended (host ``rq_active``)."""
        if self.limits_rq:
            self.limits_rq = False
            self.limits.request_done()
        if self.rq_open:
            self.rq_open = False
            self.stats.host(self.endpoint).rq_active -= 1

    def abort(self) -> None:
        """Close with RST (a stream reset on HTTP/1 closes the connection)."""
        if self.transport is not None:
            self.transport.abort()
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


async def connect_socket(endpoint: Address, bind_ip: str | None, timeout_s: float,
                         stats: ClusterStats, policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY
                         ) -> tuple[socket.socket, float]:
    """A connected non-blocking socket to ``endpoint`` and the connect start (monotonic s).

    Raises:
        ConnectFailure: refused, unreachable, bind or socket-option failure, or timeout.
    """
    stats.upstream_cx_total.inc()  # type: ignore[attr-defined]
    stats.upstream_cx_active.inc()
    host = stats.host(endpoint)
    host.cx_total += 1
    host.cx_active += 1
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setblocking(False)
    try:
        try:
            sockopts.prepare_upstream(sock, policy)
        except sockopts.SocketOptionError as exc:
            raise ConnectFailure(ResetReason.LOCAL_CONNECTION_FAILURE,
                                 f"failed to apply socket options: {exc.strerror}") from None
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
    except ConnectFailure:
        sock.close()
        stats.upstream_cx_connect_fail.inc()  # type: ignore[attr-defined]
        stats.upstream_cx_active.dec()
        host.cx_connect_fail += 1
        host.cx_active -= 1
        raise
    except BaseException:
        sock.close()
        stats.upstream_cx_active.dec()
        host.cx_active -= 1
        raise
    return sock, start


def _connected(transport: asyncio.BaseTransport, stats: ClusterStats, start: float) -> None:
    stats.upstream_cx_connect_ms.record((time.monotonic() - start) * 1000)
    watch_upstream(transport, stats.prefix, stats._store)  # cluster.<n>;.tcp_stats.


async def open_http(endpoint: Address, bind_ip: str | None, timeout_s: float,
                    stats: ClusterStats, policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY
                    ) -> UpstreamConnection:
    """A new HTTP/1.1 :class:`UpstreamConnection` (``upstream_cx_http1_total``).

    Raises:
        ConnectFailure: as :func:`connect_socket`.
    """
    sock, start = await connect_socket(endpoint, bind_ip, timeout_s, stats, policy)
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(
        lambda: UpstreamConnection(endpoint, stats), sock=sock)
    _connected(transport, stats, start)
    stats.upstream_cx_http1_total.inc()  # type: ignore[attr-defined]
    return conn


async def open_tcp(endpoint: Address, bind_ip: str | None, timeout_s: float,
                   stats: ClusterStats, protocol_factory: Callable[[], asyncio.Protocol],
                   policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY) -> asyncio.Transport:
    """A new upstream connection for the TCP proxy, served by ``protocol_factory()``.

    Raises:
        ConnectFailure: as :func:`connect_socket`.
    """
    sock, start = await connect_socket(endpoint, bind_ip, timeout_s, stats, policy)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(protocol_factory, sock=sock)
    _connected(transport, stats, start)
    return transport  # type: ignore[return-value]
