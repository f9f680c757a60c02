"""HTTP/1.1 downstream connections: drive :class:`~meshlab.proxy.http_core.HttpStream` actions.

One :class:`HttpProxy` serves every captured HTTP connection of a sidecar: h11 parses the
downstream bytes, each request gets a stream, and the actions the stream returns are executed
here (pooled upstream connections, backoff sleeps, response pumping, local replies) while a
pending downstream read watches for the client going away and the route deadline runs.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

from meshlab.proxy import http_actions as actions
from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.capture import ConnectionHandler
from meshlab.proxy.config import SidecarConfig
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.http_core import HttpStream, StreamContext, protocol_error_stream
from meshlab.proxy.http_headers import MAX_REQUEST_HEADERS_BYTES
from meshlab.proxy.metrics import PeerInfo, ProxyStats
from meshlab.proxy.pool import (
    READ_CHUNK,
    ConnectFailure,
    ConnectionPool,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
)
from meshlab.proxy.router import Address, Cluster, Router


def reset_reason(exc: UpstreamClosed | UpstreamProtocolError) -> ResetReason:
    """The Envoy reset reason of an upstream failure while a request used the connection."""
    if isinstance(exc, UpstreamProtocolError):
        return ResetReason.PROTOCOL_ERROR
    return ResetReason.CONNECTION_TERMINATION


class DownstreamReader:
    """Single reader of the downstream socket; lets a pending read double as a close watcher."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._task: asyncio.Task[bytes] | None = None
        self._stash = bytearray()
        self.eof = False

    def unread(self, data: bytes) -> None:
        """Keep ``data`` (pipelined bytes seen while watching) for the next :meth:`read`."""
        self._stash += data

    def pending(self) -> asyncio.Task[bytes]:
        """The outstanding read (started if needed)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._read())
        return self._task

    async def _read(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            return b""

    async def read(self) -> bytes:
        """Next chunk (b"" at EOF)."""
        if self._stash:
            data = bytes(self._stash)
            self._stash.clear()
            return data
        task = self.pending()
        data = await task
        self._task = None
        if not data:
            self.eof = True
        return data

    def take(self) -> bytes | None:
        """Result of a finished pending read, or None if still pending."""
        if self._task is None or not self._task.done():
            return None
        data = self._task.result()
        self._task = None
        if not data:
            self.eof = True
        return data

    def cancel(self) -> None:
        """Drop the pending read."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


class HttpProxy(ConnectionHandler):
    """Serves captured HTTP/1.1 connections (HCM + router of one sidecar).

    Args:
        config, router, stats, own_peer, access_log: as
            :class:`~meshlab.proxy.capture.ConnectionHandler`.
        pool: upstream keep-alive connections.
    """

    def __init__(self, config: SidecarConfig, router: Router, stats: ProxyStats,
                 own_peer: PeerInfo, access_log: AccessLogWriter, pool: ConnectionPool) -> None:
        super().__init__(config, router, stats, own_peer, access_log)
        self.pool = pool

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    cluster: Cluster, dst: Address, remote: Address) -> None:
        """Serve requests on one downstream connection until it closes."""
        cfg = self.config
        retry = cfg.outbound_retry if cluster.direction == "outbound" else cfg.inbound_retry
        ctx = StreamContext(cluster=cluster, router=self.router, stats=self.stats,
                            own_peer=self.own_peer, connect_timeout_s=cfg.connect_timeout_s,
                            route_timeout_s=cfg.route_timeout_s, retry=retry,
                            downstream_local=dst, downstream_remote=remote)
        hstats = self.stats.http(cluster.http_stat_prefix)
        hstats.downstream_cx_total.inc()
        hstats.downstream_cx_http1_total.inc()
        hstats.downstream_cx_active.inc()
        codec = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEADERS_BYTES)
        down = DownstreamReader(reader)
        try:
            while True:
                try:
                    event = await self._next_request_event(codec, down)
                except h11.RemoteProtocolError as exc:
                    hstats.downstream_cx_protocol_error.inc()
                    stream, reply = protocol_error_stream(ctx, exc.error_status_hint)
                    await self._write_local_reply(codec, writer, reply)
                    self.access_log.write(stream.finish())
                    return
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed or EOF between requests
                keep_going = await self._handle_request(ctx, codec, down, writer, event)
                if not keep_going or codec.our_state is not h11.DONE or \
                        codec.their_state is not h11.DONE:
                    return
                codec.start_next_cycle()
        finally:
            down.cancel()
            hstats.downstream_cx_active.dec()
            hstats.downstream_cx_destroy.inc()

    async def _next_request_event(self, codec: h11.Connection, down: DownstreamReader) -> h11.Event:
        while True:
            event = codec.next_event()
            if event is h11.NEED_DATA:
                codec.receive_data(await down.read())
                continue
            if event is h11.PAUSED:
                return h11.ConnectionClosed()
            return event

    async def _handle_request(self, ctx: StreamContext, codec: h11.Connection,
                              down: DownstreamReader, writer: asyncio.StreamWriter,
                              request: h11.Request) -> bool:
        """Serve one request; returns False when the downstream connection must close."""
        stream = HttpStream(ctx, request)
        try:
            if codec.they_are_waiting_for_100_continue:
                writer.write(codec.send(h11.InformationalResponse(status_code=100, headers=[])))
            while True:  # read the body (buffered: retries need it)
                try:
                    event = await self._next_request_event(codec, down)
                except h11.RemoteProtocolError:
                    stream.on_downstream_closed()
                    return False
                if isinstance(event, h11.Data):
                    stream.on_request_body(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # closed mid-request
                    stream.on_downstream_closed()
                    return False
            action = stream.on_request_complete()
            return await self._drive(stream, action, codec, down, writer)
        finally:
            self.access_log.write(stream.finish())

    async def _drive(self, stream: HttpStream, action: actions.Action, codec: h11.Connection,
                     down: DownstreamReader, writer: asyncio.StreamWriter) -> bool:
        """Execute ``stream``'s actions until it is done; False → close downstream."""
        ctx = stream.ctx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.route_timeout_s if ctx.route_timeout_s else None
        conn: UpstreamConnection | None = None
        bind_ip = ctx.cluster.bind_ip
        try:
            while True:
                if isinstance(action, actions.Connect):
                    outcome, value = await self._race(
                        self.pool.acquire(action.address, action.bind_ip, action.timeout_s,
                                          stream.cluster_stats), down, deadline)
                    if outcome == "ok":
                        conn, _reused = value
                        action = stream.on_connected(conn.local_address)
                        continue
                elif isinstance(action, actions.Backoff):
                    outcome, value = await self._race(asyncio.sleep(action.delay_s), down,
                                                      deadline)
                    if outcome == "ok":
                        action = stream.on_backoff_elapsed()
                        continue
                elif isinstance(action, actions.SendRequest):
                    assert conn is not None
                    outcome, value = await self._race(self._exchange_head(conn, action),
                                                      down, deadline)
                    if outcome == "ok":
                        action = stream.on_response_headers(value)
                        continue
                    conn.abort()
                    conn = None
                elif isinstance(action, actions.ForwardResponse):
                    assert conn is not None
                    ok = await self._pump_response(stream, action, conn, codec, writer, deadline)
                    if ok:
                        self.pool.release(conn, bind_ip)
                    else:
                        conn.abort()
                    conn = None
                    return ok
                elif isinstance(action, actions.SendLocalReply):
                    await self._write_local_reply(codec, writer, action)
                    return not action.close
                elif isinstance(action, actions.ResetDownstream):
                    writer.transport.abort()
                    return False
                elif isinstance(action, actions.Done):
                    return True
                else:  # pragma: no cover
                    raise TypeError(f"unknown action {action!r}")
                if outcome == "closed":
                    stream.on_downstream_closed()
                    return False
                if outcome == "timeout":
                    action = stream.on_route_timeout()
                else:
                    action = self._failed(stream, value)
        finally:
            if conn is not None:
                conn.abort()

    @staticmethod
    def _failed(stream: HttpStream, exc: object) -> actions.Action:
        """Report a failed connect or exchange to ``stream``; re-raise anything unexpected."""
        if isinstance(exc, ConnectFailure):
            return stream.on_connect_failed(exc.reason, exc.transport_failure)
        if isinstance(exc, (UpstreamClosed, UpstreamProtocolError)):
            return stream.on_upstream_reset(reset_reason(exc))
        assert isinstance(exc, BaseException)
        raise exc

    async def _exchange_head(self, conn: UpstreamConnection,
                             action: actions.SendRequest) -> h11.Response:
        await conn.send(action.request, action.body)
        event = await conn.next_event()
        if not isinstance(event, h11.Response):
            raise UpstreamProtocolError(f"unexpected {type(event).__name__}")
        return event

    async def _race(self, coro, down: DownstreamReader,  # type: ignore[no-untyped-def]
                    deadline: float | None) -> tuple[str, object]:
        """Run ``coro`` against downstream close and the route deadline.

        Returns:
            ("ok", result) | ("error", exc) | ("timeout", None) | ("closed", None).
        """
        task = asyncio.ensure_future(coro)
        while True:
            watch = down.pending()
            timeout = None
            if deadline is not None:
                timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait({task, watch}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                exc = task.exception()
                return ("error", exc) if exc is not None else ("ok", task.result())
            if watch in done:
                data = down.take()
                if data:  # pipelined bytes: keep them for h11, keep waiting
                    down.unread(data)
                    continue
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                return ("closed", None)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return ("timeout", None)

    async def _pump_response(self, stream: HttpStream, action: actions.ForwardResponse,
                             conn: UpstreamConnection, codec: h11.Connection,
                             writer: asyncio.StreamWriter, deadline: float | None) -> bool:
        try:
            writer.write(codec.send(action.response))
        except h11.LocalProtocolError:
            stream.on_downstream_closed()
            return False
        loop = asyncio.get_running_loop()
        while True:
            try:
                if deadline is None:
                    event = await conn.next_event()
                else:
                    event = await asyncio.wait_for(conn.next_event(),
                                                   max(0.0, deadline - loop.time()))
            except TimeoutError:
                stream.on_route_timeout()
                writer.transport.abort()
                return False
            except (UpstreamClosed, UpstreamProtocolError) as exc:
                stream.on_upstream_reset(reset_reason(exc))
                writer.transport.abort()
                return False
            try:
                if isinstance(event, h11.Data):
                    writer.write(codec.send(event))
                    stream.on_response_body(len(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(codec.send(h11.EndOfMessage()))
                    await writer.drain()
                    stream.on_response_complete()
                    return True
                if writer.transport.get_write_buffer_size() > READ_CHUNK * 4:
                    await writer.drain()
            except (ConnectionError, OSError, h11.LocalProtocolError):
                stream.on_downstream_closed()
                return False

    async def _write_local_reply(self, codec: h11.Connection, writer: asyncio.StreamWriter,
                                 reply: actions.SendLocalReply) -> None:
        try:
            data = codec.send(reply.response)
            if reply.body:
                data += codec.send(h11.Data(data=reply.body))
            data += codec.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError, h11.LocalProtocolError):
            pass

    def __repr__(self) -> str:
        return f"HttpProxy(pod={self.config.pod.name!r}, {self.pool!r})"
