"""The asyncio layer: capture listeners, SO_ORIGINAL_DST, HTTP driving and TCP relay.

This is the only module (with :mod:`~meshlab.proxy.pool` and :mod:`~meshlab.proxy.admin`) that
touches sockets. Protocol decisions live in :mod:`~meshlab.proxy.http_core`; this module executes
the actions a stream returns and reports socket events back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import time

import h11

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.config import SidecarConfig
from meshlab.proxy.flags import Flag, ResetReason, ResponseFlags
from meshlab.proxy.http_core import (
    MAX_REQUEST_HEADERS_BYTES,
    AccessRecord,
    Backoff,
    Connect,
    Done,
    ForwardResponse,
    HttpStream,
    ResetDownstream,
    SendLocalReply,
    SendRequest,
    StreamContext,
    protocol_error_stream,
)
from meshlab.proxy.metrics import DestinationService, PeerInfo, ProxyStats
from meshlab.proxy.pool import (
    READ_CHUNK,
    ConnectFailure,
    ConnectionPool,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
    open_upstream,
)
from meshlab.proxy.router import Address, Cluster, Router

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_dst(sock: socket.socket) -> Address:
    """The pre-REDIRECT destination of an accepted socket (``getsockopt(SOL_IP, SO_ORIGINAL_DST)``).

    Raises:
        OSError: the connection was not NATed (ENOENT).
    """
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


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


class Sidecar:
    """Owns listeners, pool, stats and access log of one sidecar process."""

    def __init__(self, config: SidecarConfig, stats: ProxyStats,
                 access_log: AccessLogWriter) -> None:
        self.config = config
        self.stats = stats
        self.access_log = access_log
        self.router = Router(config)
        self.pool = ConnectionPool()
        self.own_peer = PeerInfo.from_pod(config.pod)
        self.servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, bind_ip: str = "0.0.0.0") -> None:
        """Start the 15001 and 15006 capture listeners."""
        ports = self.config.ports
        for port, handler in ((ports.outbound, self._on_outbound), (ports.inbound, self._on_inbound)):
            server = await asyncio.start_server(handler, bind_ip, port, reuse_address=True,
                                                backlog=1024, limit=READ_CHUNK * 4)
            self.servers.append(server)

    async def close(self) -> None:
        """Stop listening and close pooled connections."""
        for server in self.servers:
            server.close()
        self.pool.close_all()

    # -- accept ---------------------------------------------------------------------------------

    async def _on_outbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "outbound")

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "inbound")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      direction: str) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        listen_port = self.config.ports.outbound if direction == "outbound" else self.config.ports.inbound
        lstats = self.stats.listener(f"0.0.0.0_{listen_port}")
        lstats.downstream_cx_total.inc()
        lstats.downstream_cx_active.inc()
        start = time.monotonic()
        try:
            try:
                dst = original_dst(sock)
            except OSError:
                lstats.no_filter_chain_match.inc()
                return
            if dst[1] == listen_port or (dst[1] in (self.config.ports.outbound,
                                                    self.config.ports.inbound)
                                         and dst[0] in ("127.0.0.1", self.config.pod.ip)):
                lstats.no_filter_chain_match.inc()  # would loop into ourselves
                return
            cluster = self.router.outbound(dst) if direction == "outbound" else self.router.inbound(dst)
            remote = (peer[0], peer[1]) if peer else ("0.0.0.0", 0)
            if cluster.is_http:
                await self._serve_http(reader, writer, cluster, dst, remote)
            else:
                await self._serve_tcp(reader, writer, cluster, dst, remote)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not kill the proxy
            print(f"meshlab.proxy: {direction} connection error: {exc!r}", file=sys.stderr)
        finally:
            lstats.downstream_cx_active.dec()
            lstats.downstream_cx_destroy.inc()
            lstats.downstream_cx_length_ms.record((time.monotonic() - start) * 1000)
            with contextlib.suppress(Exception):
                writer.close()

    # -- HTTP -----------------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          cluster: Cluster, dst: Address, remote: Address) -> None:
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
                    self._log(stream.finish())
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
            self._log(stream.finish())

    async def _drive(self, stream: HttpStream, action: object, codec: h11.Connection,
                     down: DownstreamReader, writer: asyncio.StreamWriter) -> bool:
        """Execute ``stream``'s actions until it is done; False → close downstream."""
        ctx = stream.ctx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.route_timeout_s if ctx.route_timeout_s else None
        conn: UpstreamConnection | None = None
        bind_ip = ctx.cluster.bind_ip
        try:
            while True:
                if isinstance(action, Connect):
                    outcome, value = await self._race(
                        self.pool.acquire(action.address, action.bind_ip, action.timeout_s,
                                          stream.cluster_stats), down, deadline)
                    if outcome == "ok":
                        conn, _reused = value
                        action = stream.on_connected(conn.local_address)
                    elif outcome == "error" and isinstance(value, ConnectFailure):
                        action = stream.on_connect_failed(value.reason, value.transport_failure)
                    elif outcome == "error":
                        raise value
                    elif outcome == "timeout":
                        action = stream.on_route_timeout()
                    else:
                        stream.on_downstream_closed()
                        return False
                elif isinstance(action, Backoff):
                    outcome, _ = await self._race(asyncio.sleep(action.delay_s), down, deadline)
                    if outcome == "ok":
                        action = stream.on_backoff_elapsed()
                    elif outcome == "timeout":
                        action = stream.on_route_timeout()
                    else:
                        stream.on_downstream_closed()
                        return False
                elif isinstance(action, SendRequest):
                    assert conn is not None
                    outcome, value = await self._race(self._exchange_head(conn, action),
                                                      down, deadline)
                    if outcome == "ok":
                        action = stream.on_response_headers(value)
                    elif outcome == "error" and isinstance(value, (UpstreamClosed,
                                                                   UpstreamProtocolError)):
                        conn.abort()
                        conn = None
                        reason = (ResetReason.PROTOCOL_ERROR if isinstance(value, UpstreamProtocolError)
                                  else ResetReason.CONNECTION_TERMINATION)
                        action = stream.on_upstream_reset(reason)
                    elif outcome == "error":
                        raise value
                    elif outcome == "timeout":
                        conn.abort()
                        conn = None
                        action = stream.on_route_timeout()
                    else:
                        conn.abort()
                        conn = None
                        stream.on_downstream_closed()
                        return False
                elif isinstance(action, ForwardResponse):
                    assert conn is not None
                    ok = await self._pump_response(stream, action, conn, codec, writer, deadline)
                    if ok:
                        self.pool.release(conn, bind_ip)
                    else:
                        conn.abort()
                    conn = None
                    return ok
                elif isinstance(action, SendLocalReply):
                    await self._write_local_reply(codec, writer, action)
                    return not action.close
                elif isinstance(action, ResetDownstream):
                    writer.transport.abort()
                    return False
                elif isinstance(action, Done):
                    return True
                else:  # pragma: no cover
                    raise TypeError(f"unknown action {action!r}")
        finally:
            if conn is not None:
                conn.abort()

    async def _exchange_head(self, conn: UpstreamConnection, action: SendRequest) -> h11.Response:
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

    async def _pump_response(self, stream: HttpStream, action: ForwardResponse,
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
                reason = (ResetReason.PROTOCOL_ERROR if isinstance(exc, UpstreamProtocolError)
                          else ResetReason.CONNECTION_TERMINATION)
                stream.on_upstream_reset(reason)
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
                                 reply: SendLocalReply) -> None:
        try:
            data = codec.send(reply.response)
            if reply.body:
                data += codec.send(h11.Data(data=reply.body))
            data += codec.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError, h11.LocalProtocolError):
            pass

    # -- TCP ------------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         cluster: Cluster, dst: Address, remote: Address) -> None:
        start_wall, start = time.time(), time.monotonic()
        cstats = self.stats.cluster(cluster.name)
        tcp_prefix = f"tcp.{cluster.name}."
        store = self.stats.store
        store.counter(tcp_prefix + "downstream_cx_total").inc()
        flags = ResponseFlags()
        endpoint = self.router.pick(cluster)
        local: Address | None = None
        transport = None
        up_bytes = down_bytes = 0
        tags = self._tcp_tags(cluster)
        self.stats.istio.record_tcp(tags, opened=True)
        try:
            if endpoint is None:
                flags.add(Flag.UH)
                return
            try:
                up_reader, up_writer = await open_upstream(endpoint, cluster.bind_ip,
                                                           self.config.connect_timeout_s, cstats)
            except ConnectFailure as exc:
                flags.add(Flag.UF)
                flags.add(Flag.URX)  # max_connect_attempts 1 → UF,URX
                cstats.counter("upstream_cx_connect_attempts_exceeded").inc()
                transport = exc.transport_failure or None
                return
            sockname = up_writer.get_extra_info("sockname")
            local = (sockname[0], sockname[1]) if sockname else None
            up_bytes, down_bytes = await relay_tcp(reader, writer, up_reader, up_writer)
            cstats.upstream_cx_active.dec()
            cstats.upstream_cx_destroy.inc()  # type: ignore[attr-defined]
            store.counter(tcp_prefix + "downstream_cx_rx_bytes_total").inc(up_bytes)
            store.counter(tcp_prefix + "downstream_cx_tx_bytes_total").inc(down_bytes)
        finally:
            self.stats.istio.record_tcp(tags, closed=True, sent_bytes=down_bytes,
                                        received_bytes=up_bytes)
            self._log(AccessRecord(
                start_time_s=start_wall, route_name=None, method=None, path=None, protocol=None,
                response_code=0, response_flags=str(flags), response_code_details=None,
                connection_termination_details=None,
                upstream_transport_failure_reason=transport.replace(" ", "_") if transport else None,
                bytes_received=up_bytes, bytes_sent=down_bytes,
                duration_ms=int((time.monotonic() - start) * 1000), upstream_service_time=None,
                x_forwarded_for=None, user_agent=None, request_id=None, authority=None,
                upstream_host=f"{endpoint[0]}:{endpoint[1]}" if endpoint else None,
                upstream_cluster=cluster.name,
                upstream_local_address=f"{local[0]}:{local[1]}" if local else None,
                downstream_local_address=f"{dst[0]}:{dst[1]}",
                downstream_remote_address=f"{remote[0]}:{remote[1]}"))

    def _tcp_tags(self, cluster: Cluster):  # type: ignore[no-untyped-def]
        svc = DestinationService(cluster.destination_service, cluster.destination_service_name,
                                 cluster.destination_service_namespace)
        unknown = PeerInfo()
        if cluster.direction == "outbound":
            return self.stats.istio.labels("source", self.own_peer, unknown, svc, "tcp", None,
                                           "-", "unknown")
        return self.stats.istio.labels("destination", unknown, self.own_peer, svc, "tcp", None,
                                       "-", "none")

    def _log(self, record: AccessRecord) -> None:
        self.access_log.write(record)

    def __repr__(self) -> str:
        return f"Sidecar(pod={self.config.pod.name!r}, {self.pool!r})"


async def relay_tcp(down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
                    ) -> tuple[int, int]:
    """Plain bidirectional relay; a FIN is forwarded as ``shutdown(SHUT_WR)`` to the other side.

    Kept small on purpose: a later issue replaces it with Envoy's exact half-close semantics
    (no FIN-WAIT-2 timer, TCP proxy ``idle_timeout``; ENVOY.md §8).

    Returns:
        (bytes downstream→upstream, bytes upstream→downstream).
    """
    counts = [0, 0]

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, idx: int) -> None:
        try:
            while True:
                data = await src.read(READ_CHUNK)
                if not data:
                    break
                counts[idx] += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof() and not dst.is_closing():
                    dst.write_eof()

    try:
        await asyncio.gather(pump(down_reader, up_writer, 0), pump(up_reader, down_writer, 1))
    finally:
        with contextlib.suppress(Exception):
            up_writer.close()
    return counts[0], counts[1]
