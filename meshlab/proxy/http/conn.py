"""HTTP/1.1 downstream connections: drive :class:`~meshlab.proxy.http.core.HttpStream` actions.

One :class:`HttpProxy` serves every captured HTTP connection of a sidecar (each connection is its
own asyncio task, so a slow or half-sent request never blocks another connection): a
:class:`~meshlab.proxy.http.codec.ServerCodec` (httptools, h11 for anything unusual) parses
the downstream bytes under Envoy's head limits (:mod:`~meshlab.proxy.http.limits`), each request
gets a stream, and the actions the stream returns are executed here (fault delays, pooled
upstream connections, backoff sleeps, response pumping, local replies) while a pending
downstream read watches for the client going away and the route and per-try deadlines run.

Deadlines (ENVOY.md §8): the route timeout runs from the router's start (after any fault delay)
to the end of the response; the per-try timeout from each attempt's connection ready. A local
reply that closes the connection is followed by ``delayed_close_timeout``
(:func:`~meshlab.proxy.http.downstream.delayed_close`).
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.capture import ConnectionHandler
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.http import actions
from meshlab.proxy.http.codec import Http1Request, ServerCodec
from meshlab.proxy.http.context import Deadlines
from meshlab.proxy.http.core import HttpStream, StreamContext, protocol_error_stream
from meshlab.proxy.http.downstream import DownstreamReader, delayed_close
from meshlab.proxy.http.limits import HeadLimitExceeded, HeadMeter, codec_error_reply
from meshlab.proxy.http.route import route_defaults
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.upstream.circuit import CircuitRegistry
from meshlab.proxy.upstream.pool import (
    READ_CHUNK,
    ConnectFailure,
    ConnectionPool,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
)
from meshlab.proxy.upstream.router import Address, Cluster, Router

#: ``serve`` outcomes of one request: keep the connection, close it, or close after the delay.
KEEP, CLOSE, LINGER = "keep", "close", "linger"


def reset_reason(exc: UpstreamClosed | UpstreamProtocolError) -> ResetReason:
    """The Envoy reset reason of an upstream failure while a request used the connection."""
    if isinstance(exc, UpstreamProtocolError):
        return ResetReason.PROTOCOL_ERROR
    return ResetReason.CONNECTION_TERMINATION


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
        self.circuits = CircuitRegistry()  # per-cluster circuit breakers (ENVOY.md §8)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    cluster: Cluster, dst: Address, remote: Address) -> None:
        """Serve requests on one downstream connection until it closes."""
        cfg = self.config
        rd = route_defaults(cfg, cluster)
        ctx = StreamContext(cluster=cluster, router=self.router, stats=self.stats,
                            own_peer=self.own_peer, connect_timeout_s=rd.connect_timeout_s,
                            route_timeout_s=rd.route_timeout_s, retry=rd.retry,
                            downstream_local=dst, downstream_remote=remote)
        hstats = self.stats.http(cluster.http_stat_prefix)
        hstats.downstream_cx_total.inc()
        hstats.downstream_cx_http1_total.inc()
        hstats.downstream_cx_active.inc()
        max_bytes = cfg.max_request_headers_kb * 1024
        # the codec's own limit sits above Envoy's so the HeadMeter decides (ENVOY.md §8)
        codec = ServerCodec(max_incomplete_event_size=max_bytes + READ_CHUNK)
        meter = HeadMeter(max_bytes, cfg.max_headers_count)
        down = DownstreamReader(reader)
        outcome = CLOSE
        try:
            while True:
                try:
                    event = await self._next_request_event(codec, down, meter)
                except (h11.RemoteProtocolError, HeadLimitExceeded) as exc:
                    reply = exc.reply if isinstance(exc, HeadLimitExceeded) \
                        else codec_error_reply(exc)
                    hstats.downstream_cx_protocol_error.inc()
                    stream, local = protocol_error_stream(ctx, reply)
                    await self._write_local_reply(codec, writer, local)
                    self.access_log.write(stream.finish())
                    outcome = LINGER
                    return
                meter.reset()
                if not isinstance(event, Http1Request):
                    return  # ConnectionClosed or EOF between requests
                outcome = await self._handle_request(ctx, codec, down, writer, event)
                if outcome != KEEP or not codec.start_next_cycle():
                    return
        finally:
            if outcome == LINGER:
                await delayed_close(down, cfg.delayed_close_timeout_s)
            down.cancel()
            hstats.downstream_cx_active.dec()
            hstats.downstream_cx_destroy.inc()

    async def _next_request_event(self, codec: ServerCodec, down: DownstreamReader,
                                  meter: HeadMeter | None = None) -> object:
        """The next codec event; while a head is pending, ``meter`` enforces Envoy's limits.

        Raises:
            h11.RemoteProtocolError: unparseable bytes.
            HeadLimitExceeded: the head went over ``max_request_headers_kb`` or
                ``max_headers_count``.
        """
        while True:
            event = codec.next_event()
            if event is h11.NEED_DATA:
                data = await down.read()
                if meter is not None:
                    over = meter.feed(data)
                    if over is not None:
                        raise HeadLimitExceeded(over)
                codec.receive_data(data)
                continue
            return event

    async def _handle_request(self, ctx: StreamContext, codec: ServerCodec,
                              down: DownstreamReader, writer: asyncio.StreamWriter,
                              request: Http1Request) -> str:
        """Serve one request; returns KEEP, CLOSE or LINGER (close after the delay)."""
        stream = HttpStream(ctx, request)
        stream.limits = self.circuits.get(ctx.cluster, self.stats)
        try:
            if codec.they_are_waiting_for_100_continue:
                writer.write(codec.send(h11.InformationalResponse(status_code=100, headers=[])))
            while True:  # read the body (buffered: retries need it)
                try:
                    event = await self._next_request_event(codec, down)
                except h11.RemoteProtocolError:
                    stream.on_downstream_closed()
                    return CLOSE
                if isinstance(event, h11.Data):
                    stream.on_request_body(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # closed mid-request
                    stream.on_downstream_closed()
                    return CLOSE
            action = stream.on_request_complete()
            return await self._drive(stream, action, codec, down, writer)
        finally:
            self.access_log.write(stream.finish())

    async def _drive(self, stream: HttpStream, action: actions.Action, codec: ServerCodec,
                     down: DownstreamReader, writer: asyncio.StreamWriter) -> str:
        """Execute ``stream``'s actions until it is done; returns KEEP, CLOSE or LINGER."""
        ctx = stream.ctx
        dl = Deadlines(asyncio.get_running_loop().time)
        conn: UpstreamConnection | None = None
        bind_ip = ctx.cluster.bind_ip
        try:
            while True:
                if isinstance(action, actions.FaultDelay):
                    outcome, value = await self._race(asyncio.sleep(action.delay_s), down, dl)
                    if outcome == "ok":
                        action = stream.on_fault_delay_elapsed()
                        continue
                elif isinstance(action, actions.Connect):
                    dl.start_route(stream.timeouts.timeout_s)
                    dl.start_per_try(None)
                    try:  # a pooled connection needs no wait (and no task)
                        idle = self.pool.acquire_idle(action.address, action.bind_ip,
                                                      stream.cluster_stats,
                                                      policy=ctx.cluster.policy,
                                                      limits=stream.limits)
                    except ConnectFailure as exc:  # circuit-breaker overflow
                        outcome, value = "error", exc
                    else:
                        if idle is not None:
                            outcome, value = "ok", (idle, True)
                        else:
                            outcome, value = await self._race(
                                self.pool.acquire(action.address, action.bind_ip,
                                                  action.timeout_s, stream.cluster_stats,
                                                  policy=ctx.cluster.policy,
                                                  limits=stream.limits), down, dl)
                    if outcome == "ok":
                        conn, _reused = value  # type: ignore[misc]
                        assert conn is not None
                        dl.start_per_try(stream.timeouts.per_try_timeout_s)
                        action = stream.on_connected(conn.local_address)
                        continue
                elif isinstance(action, actions.Backoff):
                    dl.start_per_try(None)
                    if conn is not None:  # retried after a response: reset that stream
                        conn.abort()
                        conn = None
                    outcome, value = await self._race(asyncio.sleep(action.delay_s), down, dl)
                    if outcome == "ok":
                        action = stream.on_backoff_elapsed()
                        continue
                elif isinstance(action, actions.SendRequest):
                    assert conn is not None
                    outcome, value = await self._race(self._exchange_head(conn, action),
                                                      down, dl)
                    if outcome == "ok":
                        action = stream.on_response_headers(value)  # type: ignore[arg-type]
                        continue
                    conn.abort()
                    conn = None
                elif isinstance(action, actions.ForwardResponse):
                    assert conn is not None
                    ok = await self._pump_response(stream, action, conn, codec, down, writer, dl)
                    if ok:
                        self.pool.release(conn, bind_ip,
                                          idle_timeout_s=ctx.cluster.policy.http_idle_timeout_s,
                                          max_requests=ctx.cluster.policy.max_requests_per_connection)
                    else:
                        conn.abort()
                    conn = None
                    return KEEP if ok else CLOSE
                elif isinstance(action, actions.SendLocalReply):
                    await self._write_local_reply(codec, writer, action)
                    return LINGER if action.close else KEEP
                elif isinstance(action, actions.ResetDownstream):
                    writer.transport.abort()
                    return CLOSE
                elif isinstance(action, actions.Done):
                    return KEEP
                else:  # pragma: no cover
                    raise TypeError(f"unknown action {action!r}")
                if outcome == "closed":
                    stream.on_downstream_closed()
                    return CLOSE
                if outcome == "timeout":
                    action = (stream.on_per_try_timeout() if value == "per_try"
                              else stream.on_route_timeout())
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
                    dl: Deadlines) -> tuple[str, object]:
        """Run ``coro`` against downstream close and the stream's deadlines.

        Returns:
            ("ok", result) | ("error", exc) | ("timeout", "route" | "per_try") | ("closed", None).
        """
        task = asyncio.ensure_future(coro)
        deadline, kind = dl.next()
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
                if data:  # pipelined bytes: keep them for the codec, keep waiting
                    down.unread(data)
                    continue
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                return ("closed", None)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return ("timeout", kind)

    async def _pump_response(self, stream: HttpStream, action: actions.ForwardResponse,
                             conn: UpstreamConnection, codec: ServerCodec,
                             down: DownstreamReader, writer: asyncio.StreamWriter,
                             dl: Deadlines) -> bool:
        """Forward the response head and body; False when the exchange broke.

        What the upstream already delivered goes downstream in one write (head and body in one
        segment when they arrived together); pending bytes are written before every wait. While
        waiting for more of the body, a downstream close ends the stream (``DC``) and resets
        the upstream, as Envoy's early-close detection does; otherwise a body stalled behind
        retransmissions would hold the request open long after its client left.
        """
        try:
            out = [codec.send(action.response)]
        except h11.LocalProtocolError:
            stream.on_downstream_closed()
            return False
        while True:
            try:
                event = conn.poll_event()
                if event is h11.NEED_DATA:
                    writer.write(b"".join(out))
                    out.clear()
                    if writer.transport.get_write_buffer_size() > READ_CHUNK * 4:
                        await writer.drain()
                    outcome, value = await self._race(conn.next_event(), down, dl)
                    if outcome == "closed":
                        stream.on_downstream_closed()
                        return False
                    if outcome == "timeout":
                        if value == "per_try":
                            stream.on_per_try_timeout()
                        else:
                            stream.on_route_timeout()
                        writer.transport.abort()
                        return False
                    if outcome == "error":
                        raise value  # type: ignore[misc]
                    event = value
            except (UpstreamClosed, UpstreamProtocolError) as exc:
                if out:  # what the upstream sent goes out before the reset
                    writer.write(b"".join(out))
                stream.on_upstream_reset(reset_reason(exc))
                writer.transport.abort()
                return False
            except (ConnectionError, OSError):
                stream.on_downstream_closed()
                return False
            try:
                if isinstance(event, h11.Data):
                    out.append(codec.send(event))
                    stream.on_response_body(len(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    out.append(codec.send(h11.EndOfMessage()))
                    writer.write(b"".join(out))
                    await writer.drain()
                    stream.on_response_complete()
                    return True
            except (ConnectionError, OSError, h11.LocalProtocolError):
                stream.on_downstream_closed()
                return False

    async def _write_local_reply(self, codec: ServerCodec, writer: asyncio.StreamWriter,
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
