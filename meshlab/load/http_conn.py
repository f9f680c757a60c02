"""One keep-alive HTTP/1.1 client connection of the open-loop engine (asyncio protocol).

The connection carries one request at a time (no pipelining, like Locust's ``FastHttpUser`` and
Envoy's HTTP/1.1 upstream codec): the owner writes a request with :meth:`Connection.send` and
is called back once the response is complete (parsed with ``httptools``, the llhttp parser of
Node.js and uvloop's ecosystem), or once the connection fails. The status and the completion
time are taken in the callback, at the moment the last byte of the response was parsed.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

import httptools


class ConnectionOwner(Protocol):
    """What a :class:`Connection` reports to (the engine)."""

    def complete(self, conn: Connection, status: int, keep_alive: bool) -> None:
        """A full response to the request in flight on ``conn`` arrived."""

    def lose(self, conn: Connection) -> None:
        """``conn`` failed or closed (its request in flight, if any, got no response)."""


def request_bytes(host_header: str, path: str) -> bytes:
    """The GET request every connection sends.

    Args:
        host_header: the ``Host`` header (the URL's ``netloc``).
        path: path and query, e.g. ``/echo?size=100``.

    Returns:
        The encoded request head (no body).
    """
    return (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            f"User-Agent: meshlab-open-loop\r\nAccept: */*\r\n\r\n").encode("latin-1")


class Connection(asyncio.Protocol):
    """A client connection; created before connecting, handed to ``loop.create_connection``.

    Args:
        owner: receives :meth:`ConnectionOwner.complete` / :meth:`ConnectionOwner.lose`.

    Attributes:
        transport: the asyncio transport once connected, else None.
        request: the owner's object for the request in flight (None when idle).
        closed: set by the owner when it has given the connection up.
    """

    __slots__ = ("_parser", "closed", "owner", "request", "transport")

    def __init__(self, owner: ConnectionOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.request: Any = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.request is not None else "idle")
        return f"Connection({state})"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; small requests go out at once (``TCP_NODELAY``)."""
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        """Write a request (the connection must be connected and idle)."""
        self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        """Parse response bytes; a malformed response fails the connection."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.owner.lose(self)

    def on_message_complete(self) -> None:
        """httptools callback: a whole response (head and body) was parsed."""
        self.owner.complete(self, self._parser.get_status_code(),
                            self._parser.should_keep_alive())

    def eof_received(self) -> bool:
        """The server closed its side: let the transport close (reported by
        :meth:`connection_lost`)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Report the loss (a no-op for the owner when it closed the connection itself)."""
        self.owner.lose(self)

    def close(self, abort: bool = False) -> None:
        """Close the transport (``abort``: at once, RST, e.g. after a timeout)."""
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
