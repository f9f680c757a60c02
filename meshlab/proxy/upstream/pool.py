"""Upstream HTTP/1.1 keep-alive connection pool, one idle list per endpoint (asyncio).

Rules:

- :meth:`ConnectionPool.acquire` reuses the most recently released idle connection of the
  endpoint (LIFO, like Envoy's HTTP/1 pool) after checking it is still open: a connection whose
  peer sent FIN or data while idle is closed and counted ``upstream_cx_destroy_remote``.
- A new connection increments ``upstream_cx_total``/``upstream_cx_active``; a failed connect
  increments ``upstream_cx_connect_fail`` (and ``upstream_cx_connect_timeout`` on timeout).
- Connect errors become :class:`ConnectFailure` carrying Envoy's reset reason and transport
  failure reason (``delayed connect error: Connection refused``).
- With the cluster's circuit breakers (:mod:`~meshlab.proxy.upstream.circuit`) ``acquire`` delegates to
  its resource manager (pending queue, ``max_connections``/``max_requests``); new sockets get the
  cluster's socket options and keepalive before connect (:mod:`~meshlab.proxy.upstream.sockopts`).
- :meth:`ConnectionPool.release` keeps a connection only if both h11 sides are DONE (keep-alive),
  it is under the cluster's ``max_requests_per_connection`` (else ``upstream_cx_max_requests``),
  and closes it after the pool ``idle_timeout`` unused (``upstream_cx_idle_timeout``; ENVOY.md §8).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import h11

from meshlab.proxy.config.policy import DEFAULT_CLUSTER_POLICY, ClusterPolicy
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.stats.metrics import ClusterStats
from meshlab.proxy.stats.tcp_stats import watch_upstream
from meshlab.proxy.upstream import sockopts
from meshlab.proxy.upstream.router import Address

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.proxy.upstream.circuit import ClusterResources

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
        self.rq_open = False  # a request stream is active (host rq_active, *_with_active_rq)
        self.peer_closed = False  # EOF/reset seen from the upstream
        self.idle_timer: asyncio.TimerHandle | None = None  # pool idle_timeout while pooled
        self.limits: ClusterResources | None = None  # circuit breakers counting this connection
        self.limits_rq = False  # holds a max_requests slot
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
        hs = self.stats.host(self.endpoint)
        hs.rq_total += 1
        hs.rq_active += 1
        self.rq_open = True
        data = self.codec.send(request)
        if body:
            data += self.codec.send(h11.Data(data=body))
        data += self.codec.send(h11.EndOfMessage())
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self.peer_closed = True
            raise UpstreamClosed(str(exc)) from None
        self.stats.upstream_cx_tx_bytes_total.inc(len(data))  # type: ignore[attr-defined]

    def poll_event(self) -> h11.Event | type[h11.NEED_DATA]:
        """The next already-received h11 event, or ``h11.NEED_DATA``; raises as :meth:`next_event`."""
        while True:
            try:
                event = self.codec.next_event()
            except h11.RemoteProtocolError as exc:
                if self.peer_closed:  # EOF mid-response: connection termination, not garbage
                    raise UpstreamClosed(str(exc)) from None
                raise UpstreamProtocolError(str(exc)) from None
            if isinstance(event, h11.ConnectionClosed):
                self.peer_closed = True
                raise UpstreamClosed("connection closed")
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx: Envoy answers 100-continue itself
            return event

    async def next_event(self) -> h11.Event:
        """The next h11 event from the upstream (Response, Data, EndOfMessage…).

        Raises:
            UpstreamClosed: EOF/reset before the response ended.
            UpstreamProtocolError: unparseable response.
        """
        while True:
            event = self.poll_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.reader.read(READ_CHUNK)
            except (ConnectionError, OSError) as exc:
                self.peer_closed = True
                raise UpstreamClosed(str(exc)) from None
            self.stats.upstream_cx_rx_bytes_total.inc(len(data))  # type: ignore[attr-defined]
            if not data:
                self.peer_closed = True
            self.codec.receive_data(data)

    def close(self, *, remote: bool = False) -> None:
        """Close the socket and update the destroy counters (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.stats.connection_closed(self.endpoint, remote=remote or self.peer_closed,
                                     with_active_rq=self.rq_open,
                                     length_ms=(time.monotonic() - self.created_s) * 1000)
        self.end_request()
        if self.limits is not None:
            self.limits.connection_closed(self)
        try:
            self.writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass

    def end_request(self) -> None:
        """The request stream on this connection ended (host ``rq_active``)."""
        if self.limits_rq:
            self.limits_rq = False
            assert self.limits is not None
            self.limits.request_done()
        if self.rq_open:
            self.rq_open = False
            self.stats.host(self.endpoint).rq_active -= 1

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


async def open_upstream(endpoint: Address, bind_ip: str | None, timeout_s: float, stats: ClusterStats,
                        policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``endpoint`` (optionally from ``bind_ip``), updating connect stats; the
    cluster ``policy``'s socket options and keepalive are set before connect.

    Raises:
        ConnectFailure: refused, unreachable, bind failure or connect timeout.
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
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK * 4)
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
    stats.upstream_cx_connect_ms.record((time.monotonic() - start) * 1000)
    watch_upstream(writer.transport, stats.prefix, stats._store)  # cluster.<n>;.tcp_stats.
    return reader, writer


#: (cluster name, endpoint, bind ip) of a pooled connection.
PoolKey = tuple[str | None, Address, str | None]


class ConnectionPool:
    """Idle keep-alive connections keyed by (cluster, endpoint, bind ip).

    Envoy keeps one pool per cluster and host, so two clusters with the same endpoint (two
    Services, one pod) never share a connection or its stats and idle timeout.
    """

    def __init__(self) -> None:
        self._idle: dict[PoolKey, deque[UpstreamConnection]] = {}
        self.reused = 0
        self.created = 0

    async def acquire(self, endpoint: Address, bind_ip: str | None, timeout_s: float,
                      stats: ClusterStats, *, policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY,
                      limits: ClusterResources | None = None) -> tuple[UpstreamConnection, bool]:
        """A usable connection to ``endpoint`` and whether it was reused.

        Args:
            endpoint, bind_ip, timeout_s, stats: where to, from where, connect timeout, stats.
            policy: the cluster policy (socket options, keepalive, pool idle timeout).
            limits: the cluster's circuit breakers; None = unlimited.

        Raises:
            ConnectFailure: a new connection could not be made, or
                :class:`~meshlab.proxy.upstream.circuit.Overflow` (a subclass) from ``limits``.
        """
        if limits is not None:
            return await limits.acquire(self, endpoint, bind_ip, timeout_s, stats, policy)
        conn = self.take_idle(endpoint, bind_ip, stats)
        return (conn, True) if conn is not None else (
            await self.connect(endpoint, bind_ip, timeout_s, stats, policy), False)

    def acquire_idle(self, endpoint: Address, bind_ip: str | None, stats: ClusterStats, *,
                     policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY,
                     limits: ClusterResources | None = None) -> UpstreamConnection | None:
        """:meth:`acquire`'s reuse path without waiting: a pooled connection or None.

        Raises:
            :class:`~meshlab.proxy.upstream.circuit.Overflow`: ``limits``' request limit reached.
        """
        if limits is not None:
            return limits.acquire_idle(self, endpoint, bind_ip, stats, policy)
        return self.take_idle(endpoint, bind_ip, stats)

    def take_idle(self, endpoint: Address, bind_ip: str | None,
                  stats: ClusterStats | None = None) -> UpstreamConnection | None:
        """The most recently pooled usable connection of ``stats``' cluster to ``endpoint``."""
        idle = self._idle.get((getattr(stats, "name", None), endpoint, bind_ip))
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.is_usable():
                self.reused += 1
                return conn
            conn.close(remote=True)  # the upstream closed it while idle
        return None

    async def connect(self, endpoint: Address, bind_ip: str | None, timeout_s: float,
                      stats: ClusterStats, policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY
                      ) -> UpstreamConnection:
        """A new connection (see :func:`open_upstream`).

        Raises:
            ConnectFailure: refused, unreachable, bind or socket-option failure, timeout.
        """
        reader, writer = await open_upstream(endpoint, bind_ip, timeout_s, stats, policy)
        stats.upstream_cx_http1_total.inc()  # type: ignore[attr-defined]
        self.created += 1
        return UpstreamConnection(endpoint, reader, writer, stats)

    def release(self, conn: UpstreamConnection, bind_ip: str | None, *,
                idle_timeout_s: float = 3600.0, max_requests: int = 0) -> None:
        """Return ``conn`` after a complete exchange; keeps it only if keep-alive is possible.

        Args:
            conn: the connection whose exchange completed.
            bind_ip: its source address key.
            idle_timeout_s: the cluster's HTTP pool ``idle_timeout`` (Envoy default 1 h, DR
                ``http.idleTimeout``); a pooled connection idle that long is closed
                (``upstream_cx_idle_timeout``); 0 disables it.
            max_requests: DR ``maxRequestsPerConnection``; a connection that served that many
                requests is closed (``upstream_cx_max_requests``); 0 = unlimited.
        """
        codec = conn.codec
        conn.end_request()
        if conn.closed or codec.our_state is not h11.DONE or codec.their_state is not h11.DONE:
            conn.close(remote=codec.their_state is h11.CLOSED)
            return
        if max_requests and conn.requests >= max_requests:
            conn.stats.upstream_cx_max_requests.inc()
            conn.close()
            return
        try:
            codec.start_next_cycle()
        except h11.LocalProtocolError:
            conn.close()
            return
        self.park(conn, bind_ip, idle_timeout_s)

    def park(self, conn: UpstreamConnection, bind_ip: str | None,
             idle_timeout_s: float = 3600.0) -> None:
        """Pool an open, idle connection; a request waiting for its host gets it first."""
        if conn.limits is not None and conn.limits.hand_off(conn, bind_ip):
            return
        key = (getattr(conn.stats, "name", None), conn.endpoint, bind_ip)
        self._idle.setdefault(key, deque()).append(conn)
        if idle_timeout_s > 0:
            conn.idle_timer = asyncio.get_running_loop().call_later(
                idle_timeout_s, self._idle_expired, key, conn)

    def _idle_expired(self, key: PoolKey, conn: UpstreamConnection) -> None:
        """Envoy's pool ``idle_timeout`` fired for a pooled connection: close it locally."""
        conn.idle_timer = None
        idle = self._idle.get(key)
        if idle is None or conn not in idle:
            return
        idle.remove(conn)
        conn.stats.upstream_cx_idle_timeout.inc()
        conn.close()

    def close_all(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if conn.idle_timer is not None:
                    conn.idle_timer.cancel()
                conn.close()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"ConnectionPool(idle={idle}, created={self.created}, reused={self.reused})"
