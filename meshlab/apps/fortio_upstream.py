"""Keep-alive HTTP/1.1 client for fortio's multi-server (``-M``), on asyncio streams and h11.

It behaves like the Go ``http.Transport`` fortio's forwarder uses, where that is visible on the
wire or in the reply body:

- Idle connections are pooled per ``host:port`` (at most 128, most recently used first, no idle
  timeout) and dropped when the peer has closed them.
- One overall deadline per request (fortio ``-timeout``, 3 s by default) covers connect, send and
  reading the response; when it expires after the headers arrived, the partial body is kept.
- A request on a *reused* connection that fails before any response byte is retried on another
  connection when the method is idempotent (GET, HEAD, OPTIONS, TRACE), as Go does.
- Failures are reported as Go's ``url.Error`` text, e.g.
  ``Get "http://x:8080/echo": dial tcp 10.0.0.2:8080: connect: connection refused``.
- Dialed sockets get Go's TCP keep-alive defaults (:func:`~meshlab.apps.netutil.set_go_keepalive`).

The target name is resolved with the system resolver (``/etc/hosts`` in the lab); a sidecar's
iptables REDIRECT intercepts the connection transparently.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from meshlab.apps.netutil import format_addr, set_go_keepalive
from meshlab.errors import ConfigError, MeshlabError

DEFAULT_TIMEOUT_S = 3.0
MAX_IDLE_PER_HOST = 128
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_READ_CHUNK_BYTES = 65536
_TIMEOUT_TEXT = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"


class UpstreamError(MeshlabError):
    """A forwarded request failed; ``str(err)`` is Go's ``url.Error`` text."""


class _PeerClosed(Exception):
    """The target closed the connection before a complete response head."""


class _StaleConnection(Exception):
    """A reused connection failed before any response byte (safe to retry if idempotent)."""


@dataclass(frozen=True)
class Destination:
    """One ``-M`` destination.

    Attributes:
        base_url: the URL as used in messages (scheme added, trailing ``/`` removed).
        host: host name or address to connect to.
        port: TCP port.
        authority: the ``Host`` header sent (the URL's ``host[:port]`` as written).
        path_prefix: path of the base URL, prepended to the mirrored request target.
    """

    base_url: str
    host: str
    port: int
    authority: str
    path_prefix: str

    @classmethod
    def parse(cls, url: str, mirror_origin: bool = True) -> Destination:
        """Parse a base URL the way fortio's ``MultiServer`` normalises it.

        Raises:
            ConfigError: not an ``http://`` URL with a host (https is not supported).
        """
        if mirror_origin:
            url = url.removesuffix("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ConfigError(f"-M target {url!r}: only http:// targets are supported by meshlab")
        try:
            port = parts.port or 80
        except ValueError as err:
            raise ConfigError(f"-M target {url!r}: {err}") from None
        if not parts.hostname:
            raise ConfigError(f"-M target {url!r}: missing host")
        prefix = parts.path + ("?" + parts.query if parts.query else "")
        return cls(url, parts.hostname, port, parts.netloc.rpartition("@")[2], prefix)

    def url_for(self, request_target: str) -> str:
        """The full URL fortio requests for a mirrored request target."""
        return self.base_url + request_target


@dataclass
class UpstreamResponse:
    """A target's reply: status and body (partial when the deadline hit mid-body)."""

    status: int
    body: bytes


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.reused = False

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class UpstreamPool:
    """Pooled keep-alive connections to the multi-server's targets.

    Args:
        timeout_s: overall deadline of one request, in seconds.
        max_idle_per_host: idle connections kept per ``host:port``.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_idle_per_host: int = MAX_IDLE_PER_HOST) -> None:
        self.timeout_s = timeout_s
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    def __repr__(self) -> str:
        idle = {f"{h}:{p}": len(c) for (h, p), c in self._idle.items()}
        return f"UpstreamPool(timeout_s={self.timeout_s}, idle={idle})"

    async def request(self, target: Destination, method: str, request_target: str,
                      headers: Sequence[tuple[str, str]], body: bytes) -> UpstreamResponse:
        """Send one request to ``target`` and read the whole reply.

        Args:
            target: where to send it.
            method: HTTP method.
            request_target: path + query appended to the target's path prefix.
            headers: request headers (without Host/Content-Length; they are added here).
            body: request body (``Content-Length`` is sent for a body or for POST/PUT/PATCH).

        Returns:
            The target's status and body.

        Raises:
            UpstreamError: no response headers could be obtained (Go-style message).
        """
        url = target.url_for(request_target)
        op = method[:1].upper() + method[1:].lower()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        all_headers = [("Host", target.authority), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            all_headers.append(("Content-Length", str(len(body))))
        request = h11.Request(method=method, target=(target.path_prefix + request_target) or "/",
                              headers=all_headers)
        key = (target.host, target.port)
        try:
            for _attempt in range(self.max_idle_per_host + 2):
                conn = self._take_idle(key)
                if conn is None:
                    async with asyncio.timeout_at(deadline):
                        conn = await self._dial(target.host, target.port)
                try:
                    return await self._exchange(conn, key, request, body, deadline)
                except _StaleConnection as err:
                    if method not in IDEMPOTENT_METHODS:
                        raise UpstreamError(f'{op} "{url}": {err}') from None
            raise UpstreamError(f'{op} "{url}": EOF')
        except TimeoutError:
            raise UpstreamError(f'{op} "{url}": {_TIMEOUT_TEXT}') from None
        except _DialError as err:
            raise UpstreamError(f'{op} "{url}": {err}') from None
        except (_PeerClosed, OSError, h11.ProtocolError) as err:
            raise UpstreamError(f'{op} "{url}": {_describe(err)}') from None

    async def close(self) -> None:
        """Close every idle connection."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _put_idle(self, key: tuple[str, int], conn: _Conn) -> None:
        conns = self._idle.setdefault(key, [])
        if len(conns) < self.max_idle_per_host and conn.usable():
            conn.reused = True
            conns.append(conn)
        else:
            conn.close()

    async def _dial(self, host: str, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise _DialError(f"dial tcp: lookup {host}: no such host") from None
        error = _DialError(f"dial tcp: lookup {host}: no such host")
        for _family, _type, _proto, _name, sockaddr in infos:
            address = format_addr(str(sockaddr[0]), port)
            try:
                reader, writer = await asyncio.open_connection(
                    str(sockaddr[0]), port, limit=_READ_CHUNK_BYTES)
            except OSError as err:
                error = _DialError(f"dial tcp {address}: connect: {_describe(err)}")
                continue
            set_go_keepalive(writer.get_extra_info("socket"))
            return _Conn(reader, writer)
        raise error

    async def _exchange(self, conn: _Conn, key: tuple[str, int], request: h11.Request,
                        body: bytes, deadline: float) -> UpstreamResponse:
        got_bytes = False
        try:
            async with asyncio.timeout_at(deadline):
                data = conn.h11.send(request) or b""
                if body:
                    data += conn.h11.send(h11.Data(data=body)) or b""
                data += conn.h11.send(h11.EndOfMessage()) or b""
                conn.writer.write(data)
                while True:
                    event = await _next_event(conn)
                    got_bytes = True
                    if isinstance(event, h11.Response):
                        break
                    if isinstance(event, h11.ConnectionClosed):
                        raise _PeerClosed("EOF")
        except (_PeerClosed, OSError, h11.RemoteProtocolError, TimeoutError) as err:
            conn.close()
            if conn.reused and not got_bytes and not isinstance(err, TimeoutError):
                raise _StaleConnection(_describe(err)) from None
            if isinstance(err, h11.RemoteProtocolError):
                raise _PeerClosed("EOF") from None
            raise
        status = event.status_code
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    event = await _next_event(conn)
                    if isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
        except (OSError, h11.ProtocolError, TimeoutError):
            conn.close()
            return UpstreamResponse(status, b"".join(chunks))
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._put_idle(key, conn)
        else:
            conn.close()
        return UpstreamResponse(status, b"".join(chunks))


class _DialError(Exception):
    """Connecting failed; ``str()`` is Go's ``dial tcp …`` text."""


async def _next_event(conn: _Conn) -> object:
    while True:
        event = conn.h11.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await conn.reader.read(_READ_CHUNK_BYTES)
        conn.h11.receive_data(data)


def _describe(err: BaseException) -> str:
    """Go-like lowercase text of a socket error (``connection refused``)."""
    if isinstance(err, _PeerClosed | h11.RemoteProtocolError):
        return "EOF"
    if isinstance(err, OSError) and err.errno:
        text = os.strerror(err.errno)
        if isinstance(err, ConnectionResetError | BrokenPipeError):
            return f"read: {text[:1].lower()}{text[1:]}"
        return text[:1].lower() + text[1:]
    return str(err) or type(err).__name__
