"""The asyncio side of the fortio-compatible server: sockets, h11 framing, timers.

All reply content comes from :mod:`meshlab.apps.fortio_replies`; this module reads requests,
sleeps the decided delay, writes replies and owns connection lifetimes:

- HTTP/1.1 keep-alive with pipelining (h11); a connection waiting longer than
  ``idle_timeout_s`` (fortio ``-server-idle-timeout``, 30 s) for the next request head is closed.
  With ``idle_race_s`` (meshlab-only ``-meshlab-idle-race``) a request arriving after that long
  idle is answered with a RST instead (:mod:`meshlab.apps.idle_race`).
- ``Connection: close`` replies end with a half-close (FIN) and up to 0.5 s for the client's own
  FIN before the socket is closed, like Go's ``closeWriteAndWait`` (avoids a RST).
- A status Go refuses (outside 100..999) drops the connection without a reply.
- ``Expect: 100-continue`` gets ``100 Continue`` before the body is read.
- Accepted and dialed sockets get Go's TCP keep-alive defaults.
- ``/debug`` prints ``$HOSTNAME`` when set (the pod name in the lab, where pods share the host's
  UTS namespace), else the host name, where fortio prints ``os.Hostname()``.

Listeners of ``fortio server``: http-echo (8080), grpc-ping (8079, accepts TCP only: gRPC is not
implemented), tcp-echo and udp-echo (8078), https-redirect (8081), and one per ``-M``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

from meshlab.apps import fortio_replies as replies
from meshlab.apps import gohttp
from meshlab.apps.fortio_replies import EchoConfig, TargetResult
from meshlab.apps.fortio_upstream import DEFAULT_TIMEOUT_S, Destination, UpstreamError, UpstreamPool
from meshlab.apps.gohttp import HttpReply, HttpRequest
from meshlab.apps.idle_race import IdleRace
from meshlab.apps.netutil import ListenSpec, peer_addr, set_go_keepalive
from meshlab.apps.tcp_echo import handle_echo
from meshlab.errors import LabError

log = logging.getLogger("meshlab.apps.fortio")

Handler = Callable[[HttpRequest], Awaitable[HttpReply]]

MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
IDLE_TIMEOUT_S = 30.0
CLOSE_LINGER_S = 0.5
UDP_ECHO_MAX_BYTES = 2048
_READ_CHUNK_BYTES = 65536
DEFAULT_HTTP = ListenSpec(None, 8080)
DEFAULT_GRPC = ListenSpec(None, 8079)
DEFAULT_TCP_UDP = ListenSpec(None, 8078)
DEFAULT_REDIRECT = ListenSpec(None, 8081)


@dataclass(frozen=True)
class MultiSpec:
    """One ``-M "localport url1 url2 …"``: where to listen and where to forward."""

    listen: ListenSpec
    targets: tuple[Destination, ...]


@dataclass
class FortioConfig:
    """Everything ``fortio server`` was asked to run (``None`` listeners are disabled).

    Attributes:
        http: echo/debug server (``-http-port``).
        grpc: gRPC port (``-grpc-port``); only accepts TCP connections.
        tcp: TCP echo (``-tcp-port``).
        udp: UDP echo (``-udp-port``).
        redirect: http → https redirector (``-redirect-port``).
        multis: the ``-M`` servers.
        echo: echo/debug handler settings.
        multi_serial: ``-multi-serial-mode``: query targets one after the other.
        mirror_origin: ``-multi-mirror-origin``: append the request URI to each target.
        timeout_s: ``-timeout``: deadline of one forwarded request, in seconds.
        idle_timeout_s: ``-server-idle-timeout``: keep-alive idle limit, in seconds.
        idle_race_s: meshlab-only ``-meshlab-idle-race``: a request after this many idle
            seconds is answered with a RST (:mod:`meshlab.apps.idle_race`); 0 = off.
    """

    http: ListenSpec | None = DEFAULT_HTTP
    grpc: ListenSpec | None = DEFAULT_GRPC
    tcp: ListenSpec | None = DEFAULT_TCP_UDP
    udp: ListenSpec | None = DEFAULT_TCP_UDP
    redirect: ListenSpec | None = DEFAULT_REDIRECT
    multis: list[MultiSpec] = field(default_factory=list)
    echo: EchoConfig = field(default_factory=EchoConfig.create)
    multi_serial: bool = False
    mirror_origin: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    idle_race_s: float = 0.0


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(_READ_CHUNK_BYTES))


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, idle_timeout_s: float,
                        remote: str, race: IdleRace | None = None) -> HttpRequest | None:
    try:
        async with asyncio.timeout(idle_timeout_s):
            if race is not None and not await race.admit(conn, reader, writer):
                return None
            event = await _next_event(conn, reader)
    except TimeoutError:
        return None
    if not isinstance(event, h11.Request):
        return None
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
    chunks = []
    while True:
        part = await _next_event(conn, reader)
        if isinstance(part, h11.Data):
            chunks.append(bytes(part.data))
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None
    return HttpRequest(
        method=event.method.decode("ascii"), target=event.target.decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()],
        body=b"".join(chunks), http_version=event.http_version.decode("ascii"), remote_addr=remote)


def _reply_bytes(conn: h11.Connection, reply: HttpReply, method: str) -> bytes:
    out = b""
    if reply.informational is not None:
        out += conn.send(h11.InformationalResponse(status_code=reply.informational,
                                                   headers=[])) or b""
    headers, body = gohttp.finalize(reply, method)
    raw_headers = [(k.encode("ascii"), v.encode("utf-8", "surrogateescape")) for k, v in headers]
    out += conn.send(h11.Response(status_code=reply.status, headers=raw_headers,
                                  reason=gohttp.status_text(reply.status).encode())) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


async def serve_http_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                handler: Handler, idle_timeout_s: float = IDLE_TIMEOUT_S,
                                idle_race_s: float = 0.0) -> None:
    """Serve HTTP/1.x requests on one accepted connection until it ends.

    Args:
        reader: the connection's reader.
        writer: the connection's writer.
        handler: computes the reply of a complete request.
        idle_timeout_s: longest wait for the next request head, in seconds.
        idle_race_s: answer a request after this many idle seconds with a RST; 0 = off.
    """
    set_go_keepalive(writer.get_extra_info("socket"))
    remote = peer_addr(writer.get_extra_info("peername"))
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    linger = False
    race = IdleRace(idle_race_s) if idle_race_s > 0 else None
    try:
        while True:
            request = await _read_request(conn, reader, writer, idle_timeout_s, remote, race)
            if request is None:
                break
            reply = await handler(request)
            if reply.delay_s > 0:
                await asyncio.sleep(reply.delay_s)
            if reply.abort:
                break
            writer.write(_reply_bytes(conn, reply, request.method))
            await writer.drain()
            if reply.close or conn.our_state is not h11.DONE:
                linger = True
                break
            conn.start_next_cycle()
            if race is not None:
                race.mark_idle()
    except h11.RemoteProtocolError as err:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not reader.at_eof():
            status = err.error_status_hint
            text = f"{status} {gohttp.status_text(status)}".encode()
            with contextlib.suppress(h11.ProtocolError, OSError):
                writer.write(_reply_bytes(conn, HttpReply(status, [
                    ("Content-Type", "text/plain; charset=utf-8")], text, close=True), "GET"))
                linger = True
    except OSError as err:
        log.debug("connection from %s: %s", remote, err)
    except Exception:  # like Go's "http: panic serving": log, drop this connection only
        log.exception("panic serving %s", remote)
    finally:
        await _close(reader, writer, linger)


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, linger: bool) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        if linger and not reader.at_eof() and writer.can_write_eof():
            await writer.drain()
            writer.write_eof()
            async with asyncio.timeout(CLOSE_LINGER_S):
                while await reader.read(_READ_CHUNK_BYTES):
                    pass
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _accept_and_discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """gRPC placeholder: keep the connection open, ignore its bytes, close on EOF."""
    set_go_keepalive(writer.get_extra_info("socket"))
    with contextlib.suppress(OSError):
        while await reader.read(_READ_CHUNK_BYTES):
            pass
    await _close(reader, writer, linger=False)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data[:UDP_ECHO_MAX_BYTES], addr)  # type: ignore[attr-defined]


class FortioServer:
    """All listeners of one ``fortio server`` process.

    Args:
        config: what to run.
        rng: source of the echo query rolls (seed it for reproducible tests).
    """

    def __init__(self, config: FortioConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.addresses: dict[str, tuple[str, int]] = {}
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.BaseTransport] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._pool = UpstreamPool(config.timeout_s)
        self._started_s = time.monotonic()
        self._hostname = os.environ.get("HOSTNAME") or socket.gethostname()

    def __repr__(self) -> str:
        return f"FortioServer(addresses={self.addresses})"

    async def start(self) -> dict[str, tuple[str, int]]:
        """Bind every configured listener.

        Returns:
            Listener name (``http-echo``, ``grpc-ping``, ``tcp-echo``, ``udp-echo``,
            ``https-redirect``, ``multi-0``…) → bound ``(host, port)``.

        Raises:
            LabError: a listener cannot be bound (the ones already bound are closed).
        """
        cfg = self.config
        idle_s, race_s = cfg.idle_timeout_s, cfg.idle_race_s
        plan: list[tuple[str, ListenSpec | None, Callable[..., Awaitable[None]]]] = [
            ("http-echo", cfg.http,
             lambda r, w: serve_http_connection(r, w, self._echo_handler, idle_s, race_s)),
            ("grpc-ping", cfg.grpc, _accept_and_discard),
            ("tcp-echo", cfg.tcp, handle_echo),
            ("https-redirect", cfg.redirect,
             lambda r, w: serve_http_connection(r, w, _redirect_handler, idle_s, race_s)),
        ]
        for index, multi in enumerate(cfg.multis):
            handler = self._multi_handler(multi.targets)
            plan.append((f"multi-{index}", multi.listen,
                         lambda r, w, h=handler: serve_http_connection(r, w, h, idle_s,
                                                                        race_s)))
        try:
            for name, spec, callback in plan:
                if spec is not None:
                    server = await self._listen(name, spec, callback)
                    self._servers.append(server)
                    self._record(name, server.sockets[0].getsockname())
            if cfg.udp is not None:
                transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    _UdpEcho, local_addr=(cfg.udp.host or "0.0.0.0", cfg.udp.port),
                    reuse_port=False)
                self._udp.append(transport)
                self._record("udp-echo", transport.get_extra_info("sockname"))
        except (OSError, LabError) as err:
            await self.close()
            if isinstance(err, LabError):
                raise
            raise LabError(f"udp-echo: cannot listen on {cfg.udp}: {err}") from err
        return dict(self.addresses)

    async def close(self) -> None:
        """Stop listening and drop pooled upstream connections."""
        for server in self._servers:
            server.close()
        for transport in self._udp:
            transport.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self._servers.clear()
        self._udp.clear()
        await self._pool.close()

    def _record(self, name: str, sockname: tuple[str, int]) -> None:
        self.addresses[name] = (str(sockname[0]), int(sockname[1]))
        log.info("Fortio %s compatible %s server listening on %s", replies.VERSION, name,
                 peer_addr(sockname))

    async def _listen(self, name: str, spec: ListenSpec,
                      callback: Callable[..., Awaitable[None]]) -> asyncio.Server:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await callback(reader, writer)
            except asyncio.CancelledError:
                writer.close()  # server shutdown: end quietly (nothing awaits this task)
            finally:
                self._connections.discard(task)

        try:
            return await asyncio.start_server(tracked, spec.host, spec.port,
                                              reuse_address=True, backlog=4096)
        except OSError as err:
            raise LabError(f"{name}: cannot listen on {spec}: {err}") from err

    async def _echo_handler(self, request: HttpRequest) -> HttpReply:
        echo = self.config.echo
        picked = replies.route(request, echo.debug_path)
        if isinstance(picked, HttpReply):
            return picked
        if picked == "debug":
            return replies.debug_reply(request, self.rng, echo, environ=os.environ,
                                       uptime_s=time.monotonic() - self._started_s,
                                       hostname=self._hostname)
        return replies.echo_reply(request, self.rng, echo)

    def _multi_handler(self, targets: tuple[Destination, ...]) -> Handler:
        mirror = self.config.mirror_origin

        async def forward(index: int, target: Destination, request: HttpRequest) -> TargetResult:
            if mirror:
                method, path = request.method, request.target
                headers, body = replies.mirror_headers(request, index), request.body
            else:
                method, path, body = "GET", "", b""
                headers = replies.simple_headers(request, index)
            url = target.url_for(path)
            try:
                response = await self._pool.request(target, method, path, headers, body)
            except UpstreamError as err:
                log.warning("Error for %s: %s", url, err)
                return TargetResult(url, None, error=str(err))
            return TargetResult(url, response.status, response.body)

        async def handle(request: HttpRequest) -> HttpReply:
            if self.config.multi_serial:
                results = [await forward(i, t, request) for i, t in enumerate(targets)]
            else:
                results = list(await asyncio.gather(
                    *(forward(i, t, request) for i, t in enumerate(targets))))
            return replies.multi_reply(results, serial=self.config.multi_serial)

        return handle


async def _redirect_handler(request: HttpRequest) -> HttpReply:
    return replies.redirect_reply(request)
