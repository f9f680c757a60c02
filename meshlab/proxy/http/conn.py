"""HTTP/1.1 downstream connections: drive :class:`~meshlab.proxy.http.core.HttpStream` actions.

:class:`HttpProxy` (the HCM + router of one sidecar) makes one :class:`HttpConnection` per
captured HTTP connection. The connection is an asyncio Protocol
(:class:`~meshlab.proxy.http.downstream.DownstreamConnection`) with one driver coroutine: a
:class:`~meshlab.proxy.http.codec.ServerCodec` (httptools, h11 for anything unusual) parses the
downstream bytes under Envoy's head limits (:mod:`~meshlab.proxy.http.limits`), each request gets
a stream, and the actions the stream returns are executed here (fault delays, pooled upstream
connections, backoff, response forwarding, local replies). While a stream waits, a downstream
FIN ends it (``DC``) and the route and per-try deadlines run; the upstream connection wakes the
driver when its response events arrive, so a request costs no task and no ``asyncio.wait``.

Deadlines (ENVOY.md §8): the route timeout runs from the router's start (after any fault delay)
to the end of the response; the per-try timeout from each attempt's connection ready. A local
reply that closes the connection is followed by ``delayed_close_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import h11

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.capture import ConnectionHandler
from meshlab.proxy.cells import LOCAL, Cells
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.flags import PAYLOAD_TOO_LARGE, ResetReason
from meshlab.proxy.http import actions
from meshlab.proxy.http.codec import Http1Request, ServerCodec
from meshlab.proxy.http.context import Deadlines
from meshlab.proxy.http.core import HttpStream, StreamContext, protocol_error_stream
from meshlab.proxy.http.downstream import CLOSED, OK, DownstreamConnection
from meshlab.proxy.http.limits import HeadLimitExceeded, HeadMeter, codec_error_reply
from meshlab.proxy.http.route import route_defaults
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.upstream.circuit import CircuitRegistry
from meshlab.proxy.upstream.codec import ResponseHead
from meshlab.proxy.upstream.connection import (
    READ_CHUNK,
    ConnectFailure,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
)
from meshlab.proxy.upstream.pool import ConnectionPool
from meshlab.proxy.upstream.router import Address, Cluster, Router

#: ``serve`` outcomes of one request: keep the connection, close it, or close after the delay.
KEEP, CLOSE, LINGER = "keep", "close", "linger"
_NEED_DATA = h11.NEED_DATA
_END = h11.EndOfMessage()


def reset_reason(exc: UpstreamClosed | UpstreamProtocolError) -> ResetReason:
    """The Envoy reset reason of an upstream failure while a request used the connection."""
    if isinstance(exc, UpstreamProtocolError):
        return ResetReason.PROTOCOL_ERROR
    return ResetReason.CONNECTION_TERMINATION


def _consume(task: asyncio.Future[object]) -> None:
    """Done callback of an abandoned connect: retrieve its outcome (no 'never retrieved')."""
    if not task.cancelled():
        task.exception()


class HttpProxy(ConnectionHandler):
    """Serves captured HTTP/1.1 connections (HCM + router of one sidecar).

    Args:
        config, router, stats, own_peer, access_log: as
            :class:`~meshlab.proxy.capture.ConnectionHandler`.
        pool: upstream keep-alive connections.
        cells: where circuit-breaker counts live (shared by a sidecar's workers).
    """

    def __init__(self, config: SidecarConfig, router: Router, stats: ProxyStats,
                 own_peer: PeerInfo, access_log: AccessLogWriter, pool: ConnectionPool,
                 cells: Cells = LOCAL) -> None:
        super().__init__(config, router, stats, own_peer, access_log)
        self.pool = pool
        self.circuits = CircuitRegistry(cells)  # per-cluster circuit breakers (ENVOY.md §8)

    def connection(self, cluster: Cluster, dst: Address, remote: Address) -> HttpConnection:
        """The protocol for one captured connection to ``dst`` (original destination)."""
        return HttpConnection(self, cluster, dst, remote)

    def __repr__(self) -> str:
        return f"HttpProxy(pod={self.config.pod.name!r}, {self.pool!r})"


class HttpConnection(DownstreamConnection):
    """One downstream HTTP/1.1 connection: the codec, its streams, their upstream exchanges."""

    def __init__(self, proxy: HttpProxy, cluster: Cluster, dst: Address, remote: Address) -> None:
        super().__init__()
        self.proxy = proxy
        self.generation = proxy.router.generation
        rd = route_defaults(proxy.config, cluster)
        self.ctx = StreamContext(cluster=cluster, router=proxy.router, stats=proxy.stats,
                                 own_peer=proxy.own_peer, connect_timeout_s=rd.connect_timeout_s,
                                 route_timeout_s=rd.route_timeout_s, retry=rd.retry,
                                 downstream_local=dst, downstream_remote=remote)
        self.max_request_bytes = rd.max_request_bytes  # buffer filter; None = none
        self._forwarding: UpstreamConnection | None = None  # its body is being forwarded

    def _refresh(self) -> None:
        """After a config push (the router's generation moved): this connection's next
        request routes with the cluster and route policy the new config has."""
        router, ctx = self.proxy.router, self.ctx
        ctx.cluster = router.current(ctx.cluster)
        rd = route_defaults(router.config, ctx.cluster)
        ctx.connect_timeout_s, ctx.route_timeout_s, ctx.retry = (
            rd.connect_timeout_s, rd.route_timeout_s, rd.retry)
        self.max_request_bytes = rd.max_request_bytes
        self.generation = router.generation

    async def serve(self) -> None:
        """Serve requests until the connection closes (the caller closes the transport)."""
        proxy, ctx = self.proxy, self.ctx
        cfg = proxy.config
        hstats = proxy.stats.http(ctx.cluster.http_stat_prefix)
        hstats.downstream_cx_total.inc()
        hstats.downstream_cx_http1_total.inc()
        hstats.downstream_cx_active.inc()
        max_bytes = cfg.max_request_headers_kb * 1024
        # the codec's own limit sits above Envoy's so the HeadMeter decides (ENVOY.md §8)
        codec = ServerCodec(max_incomplete_event_size=max_bytes + READ_CHUNK)
        meter = HeadMeter(max_bytes, cfg.max_headers_count)
        outcome = CLOSE
        try:
            while True:
                try:
                    event = await self._next_request_event(codec, meter)
                except (h11.RemoteProtocolError, HeadLimitExceeded) as exc:
                    reply = exc.reply if isinstance(exc, HeadLimitExceeded) \
                        else codec_error_reply(exc)
                    hstats.downstream_cx_protocol_error.inc()
                    stream, local = protocol_error_stream(ctx, reply)
                    self._write_local_reply(codec, local)
                    proxy.access_log.write(stream.finish())
                    outcome = LINGER
                    return
                meter.reset()
                if not isinstance(event, Http1Request):
                    return  # ConnectionClosed or EOF between requests
                outcome = await self._handle_request(codec, event)
                if outcome != KEEP or not codec.start_next_cycle():
                    return
        finally:
            if outcome == LINGER:
                await self.delayed_close(cfg.delayed_close_timeout_s)
            hstats.downstream_cx_active.dec()
            hstats.downstream_cx_destroy.inc()

    async def _next_request_event(self, codec: ServerCodec, meter: HeadMeter | None = None
                                  ) -> object:
        """The next codec event; while a head is pending, ``meter`` enforces Envoy's limits.

        Raises:
            h11.RemoteProtocolError: unparseable bytes.
            HeadLimitExceeded: the head went over ``max_request_headers_kb`` or
                ``max_headers_count``.
        """
        while True:
            event = codec.next_event()
            if event is _NEED_DATA:
                data = await self.read()
                if meter is not None:
                    over = meter.feed(data)
                    if over is not None:
                        raise HeadLimitExceeded(over)
                codec.receive_data(data)
                continue
            return event

    async def _handle_request(self, codec: ServerCodec, request: Http1Request) -> str:
        """Serve one request; returns KEEP, CLOSE or LINGER (close after the delay)."""
        proxy = self.proxy
        if self.generation != proxy.router.generation:
            self._refresh()
        stream = HttpStream(self.ctx, request)
        stream.limits = proxy.circuits.get(self.ctx.cluster, proxy.stats)
        try:
            if codec.they_are_waiting_for_100_continue:
                self.write(codec.send(h11.InformationalResponse(status_code=100, headers=[])))
            while True:  # read the body (buffered: retries need it)
                try:
                    event = await self._next_request_event(codec)
                except h11.RemoteProtocolError:
                    stream.on_downstream_closed()
                    return CLOSE
                if type(event) is h11.EndOfMessage:
                    break
                if isinstance(event, h11.Data):
                    stream.on_request_body(event.data)
                    limit = self.max_request_bytes
                    if limit is not None and stream.bytes_received > limit:
                        stream.http.downstream_rq_too_large.inc()
                        return await self._drive(stream, stream.local_reply(PAYLOAD_TOO_LARGE),
                                                 codec)
                else:  # closed mid-request
                    stream.on_downstream_closed()
                    return CLOSE
            action = stream.on_request_complete()
            return await self._drive(stream, action, codec)
        finally:
            proxy.access_log.write(stream.finish())

    async def _drive(self, stream: HttpStream, action: actions.Action,
                     codec: ServerCodec) -> str:
        """Execute ``stream``'s actions until it is done; returns KEEP, CLOSE or LINGER."""
        ctx, pool = stream.ctx, self.proxy.pool
        policy = ctx.cluster.policy
        dl = Deadlines(self._loop.time)
        conn: UpstreamConnection | None = None
        value: object = None
        try:
            while True:
                kind = type(action)
                if kind is actions.SendRequest:
                    assert conn is not None
                    outcome, value = await self._exchange_head(conn, action, dl)  # type: ignore[arg-type]
                    if outcome == OK:
                        action = stream.on_response_headers(value)  # type: ignore[arg-type]
                        continue
                    conn.abort()
                    conn = None
                elif kind is actions.Connect:
                    dl.start_route(stream.timeouts.timeout_s)
                    dl.start_per_try(None)
                    outcome, value = await self._connect(stream, action, dl)  # type: ignore[arg-type]
                    if outcome == OK:
                        conn = value  # type: ignore[assignment]
                        assert conn is not None
                        conn.waker = self.wake
                        dl.start_per_try(stream.timeouts.per_try_timeout_s)
                        action = stream.on_connected(conn.local_address)
                        continue
                elif kind is actions.ForwardResponse:
                    assert conn is not None
                    ok = await self._pump_response(stream, action, conn, codec, dl)  # type: ignore[arg-type]
                    if ok:
                        pool.release(conn, ctx.cluster.bind_ip,
                                     idle_timeout_s=policy.http_idle_timeout_s,
                                     max_requests=policy.max_requests_per_connection)
                    else:
                        conn.abort()
                    conn = None
                    return KEEP if ok else CLOSE
                elif kind is actions.SendLocalReply:
                    self._write_local_reply(codec, action)  # type: ignore[arg-type]
                    return LINGER if action.close else KEEP  # type: ignore[union-attr]
                elif kind is actions.DelayRequest or kind is actions.Backoff:
                    if kind is actions.Backoff:
                        dl.start_per_try(None)
                        if conn is not None:  # retried after a response: reset that stream
                            conn.abort()
                            conn = None
                    outcome = await self.until(None, dl, self._loop.time() + action.delay_s)  # type: ignore[union-attr]
                    if outcome == OK:
                        action = (stream.on_fault_delay_elapsed() if kind is actions.DelayRequest
                                  else stream.on_backoff_elapsed())
                        continue
                elif kind is actions.ResetDownstream:
                    self.transport.abort()  # type: ignore[union-attr]
                    return CLOSE
                elif kind is actions.Done:
                    return KEEP
                else:  # pragma: no cover
                    raise TypeError(f"unknown action {action!r}")
                if outcome == CLOSED:
                    stream.on_downstream_closed()
                    return CLOSE
                if outcome == "per_try":
                    action = stream.on_per_try_timeout()
                elif outcome == "route":
                    action = stream.on_route_timeout()
                else:
                    action = self._failed(stream, value)
        finally:
            if conn is not None:
                conn.abort()

    async def _connect(self, stream: HttpStream, action: actions.Connect, dl: Deadlines
                       ) -> tuple[str, object]:
        """A connection for ``action``: pooled at once, else connect (racing close/deadlines).

        Returns:
            (``ok``, connection) | (``error``, exc) | (``closed`` | deadline kind, None).
        """
        pool, policy = self.proxy.pool, stream.ctx.cluster.policy
        try:  # a pooled connection needs no wait (and no task)
            idle = pool.acquire_idle(action.address, action.bind_ip, stream.cluster_stats,
                                     policy=policy, limits=stream.limits)
        except ConnectFailure as exc:  # circuit-breaker overflow
            return "error", exc
        if idle is not None:
            return OK, idle
        task = asyncio.ensure_future(pool.acquire(action.address, action.bind_ip,
                                                  action.timeout_s, stream.cluster_stats,
                                                  policy=policy, limits=stream.limits))
        task.add_done_callback(lambda _: self.wake())
        outcome = await self.until(task.done, dl)
        if outcome != OK:
            task.cancel()
            task.add_done_callback(_consume)
            return outcome, None
        exc = task.exception()
        if exc is not None:
            return "error", exc
        return OK, task.result()[0]

    async def _exchange_head(self, conn: UpstreamConnection, action: actions.SendRequest,
                             dl: Deadlines) -> tuple[str, object]:
        """Send the request and wait for the response head.

        Returns:
            (``ok``, head) | (``error``, exc) | (``closed`` | deadline kind, None).
        """
        try:
            conn.send(action.request, action.body)
        except UpstreamClosed as exc:
            return "error", exc
        parser = conn.parser
        outcome = await self.until(lambda: parser.events or conn.error is not None, dl)
        if outcome != OK:
            return outcome, None
        try:
            event = conn.poll_event()
        except (UpstreamClosed, UpstreamProtocolError) as exc:
            return "error", exc
        if type(event) is not ResponseHead:
            return "error", UpstreamProtocolError(f"unexpected {type(event).__name__}")
        return OK, event

    @staticmethod
    def _failed(stream: HttpStream, exc: object) -> actions.Action:
        """Report a failed connect or exchange to ``stream``; re-raise anything unexpected."""
        if isinstance(exc, ConnectFailure):
            return stream.on_connect_failed(exc.reason, exc.transport_failure)
        if isinstance(exc, (UpstreamClosed, UpstreamProtocolError)):
            return stream.on_upstream_reset(reset_reason(exc))
        assert isinstance(exc, BaseException)
        raise exc

    async def _pump_response(self, stream: HttpStream, action: actions.ForwardResponse,
                             conn: UpstreamConnection, codec: ServerCodec,
                             dl: Deadlines) -> bool:
        """Forward the response head and body; False when the exchange broke.

        What the upstream already delivered goes downstream in one write (head and body in one
        segment when they arrived together); pending bytes are written before every wait.
        While the downstream cannot take more, the upstream is not read. While waiting for more
        of the body, a downstream close ends the stream (``DC``) and resets the upstream, as
        Envoy's early-close detection does.
        """
        try:
            out = [codec.send(action.response)]
        except h11.LocalProtocolError:
            stream.on_downstream_closed()
            return False
        parser = conn.parser
        self._forwarding = conn
        try:
            return await self._forward(stream, conn, codec, dl, out,
                                       lambda: parser.events or conn.error is not None)
        finally:
            self._forwarding = None
            self._throttle(conn, False)

    async def _forward(self, stream: HttpStream, conn: UpstreamConnection, codec: ServerCodec,
                       dl: Deadlines, out: list[bytes], ready: Callable[[], object]) -> bool:
        """:meth:`_pump_response`'s loop over the upstream's events (``out``: bytes not yet
        written downstream; ``ready``: an event or error is pending)."""
        while True:
            try:
                event = conn.poll_event()
            except (UpstreamClosed, UpstreamProtocolError) as exc:
                if out:  # what the upstream sent goes out before the reset
                    self.write(b"".join(out))
                stream.on_upstream_reset(reset_reason(exc))
                self.transport.abort()  # type: ignore[union-attr]
                return False
            kind = type(event)
            try:
                if kind is h11.Data:
                    out.append(codec.send(event))  # type: ignore[arg-type]
                    stream.on_response_body(len(event.data))  # type: ignore[attr-defined]
                    continue
                if kind is h11.EndOfMessage:
                    out.append(codec.send(_END))
                    if not self.write(b"".join(out)):
                        stream.on_downstream_closed()
                        return False
                    stream.on_response_complete()
                    return True
            except h11.LocalProtocolError:
                stream.on_downstream_closed()
                return False
            if not self.write(b"".join(out)):
                stream.on_downstream_closed()
                return False
            out.clear()
            if self.write_paused:  # downstream flow control: stop reading the upstream
                outcome = await self._wait_writable(conn, dl)
            else:
                outcome = await self.until(ready, dl)
            if outcome == CLOSED:
                stream.on_downstream_closed()
                return False
            if outcome != OK:
                if outcome == "per_try":
                    stream.on_per_try_timeout()
                else:
                    stream.on_route_timeout()
                self.transport.abort()  # type: ignore[union-attr]
                return False

    async def _wait_writable(self, conn: UpstreamConnection, dl: Deadlines) -> str:
        """Wait until the downstream drained (the upstream is not read meanwhile)."""
        self._throttle(conn, True)
        try:
            return await self.until(lambda: not self.write_paused, dl)
        finally:
            self._throttle(conn, False)

    def pause_writing(self) -> None:
        """Downstream above its high-water mark: stop reading the upstream now (Envoy's
        watermark callback), not only when the driver next runs."""
        super().pause_writing()
        if self._forwarding is not None:
            self._throttle(self._forwarding, True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._forwarding is not None:
            self._throttle(self._forwarding, False)

    @staticmethod
    def _throttle(conn: UpstreamConnection, paused: bool) -> None:
        """Pause or resume reading ``conn`` (idempotent)."""
        if conn.reading_paused == paused or conn.transport is None:
            return
        conn.reading_paused = paused
        with contextlib.suppress(RuntimeError):
            if paused:
                conn.transport.pause_reading()
            else:
                conn.transport.resume_reading()

    def _write_local_reply(self, codec: ServerCodec, reply: actions.SendLocalReply) -> None:
        try:
            data = codec.send(reply.response)
            if reply.body:
                data += codec.send(h11.Data(data=reply.body))
            data += codec.send(_END)
        except h11.LocalProtocolError:
            return
        self.write(data)
