"""The keep-alive idle-close race, made deterministic (meshlab-only ``-meshlab-idle-race``).

The field case (DESIGN.md §5.5; book: "Envoy 与 Downstream/Upstream 连接状态不同步"): an upstream
server closes keep-alive connections that stayed idle for its idle timeout (Go
``http.Server.IdleTimeout``, nginx ``keepalive_timeout``, Node's 5 s ``keepAliveTimeout``),
while the proxy in front (Envoy's HTTP/1 pool, 1 h ``idle_timeout`` by default) still holds the
connection and picks it for the next request. The request crosses the server's close on the
wire, reaches a socket the server has closed, and the server's kernel answers it with a RST.
Envoy sees the connection end before any response byte: reset reason ``connection
termination``, flag ``UC``, 503 ``upstream_reset_before_response_started{connection_termination}``
(ENVOY.md §1) unless the route retries resets.

With a real timer (fortio's ``-server-idle-timeout``, Go's behaviour) the window is only the
FIN's trip plus the proxy's event-loop latency, well under a millisecond in the lab: a suite
would need thousands of requests to see it. Here the window is modelled deterministically: the
server arms no timer at ``after_s`` (the ordinary ``-server-idle-timeout`` still closes
connections idle that long, with a FIN); when the next request's first bytes arrive on a connection that has been
idle for ``after_s`` or longer, the server closes it without reading them, exactly as a server
whose idle timer fired at that instant would. The close is a RST (``SO_LINGER`` 0): Linux's
``tcp_close`` sends one when unread data sits in the receive queue (here the bytes sit in the
asyncio buffer instead, so the linger option makes the kernel do the same). Idle time runs from
the end of the previous response to the arrival of the next request's first bytes (Go sets the
idle deadline after a response); the first request of a connection and pipelined requests
already buffered are never raced. A request after less than ``after_s`` is served normally.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable

import h11

log = logging.getLogger("meshlab.apps.fortio")

_READ_CHUNK_BYTES = 65536
_LINGER_RST = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}: close sends RST


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a RST (``SO_LINGER`` 0, then close), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    writer.transport.abort()


class IdleRace:
    """Per-connection idle clock of a server in ``-meshlab-idle-race`` mode.

    Args:
        after_s: idle seconds after which the next request is answered with a RST (> 0).
        clock: monotonic seconds (tests may inject one).

    Attributes:
        raced: requests answered with a RST on this connection (0 or 1: the RST ends it).
    """

    def __init__(self, after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after_s = after_s
        self._clock = clock
        self._idle_since: float | None = None
        self.raced = 0

    def __repr__(self) -> str:
        return f"IdleRace(after_s={self.after_s}, idle_since={self._idle_since}, raced={self.raced})"

    def mark_idle(self) -> None:
        """A response was written: the connection is idle from now."""
        self._idle_since = self._clock()

    async def admit(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        """Wait for the next request's first bytes and decide whether the server serves it.

        Args:
            conn: the connection's h11 state (the bytes read here are handed to it).
            reader, writer: the connection's streams.

        Returns:
            True: serve it (the bytes, or EOF, were fed to ``conn``). False: the connection was
            idle ``after_s`` or longer and has been reset.
        """
        idle_since, self._idle_since = self._idle_since, None
        if idle_since is None or conn.trailing_data[0]:
            return True
        data = await reader.read(_READ_CHUNK_BYTES)
        idle_s = self._clock() - idle_since
        if data and idle_s >= self.after_s:
            self.raced += 1
            log.info("idle race: request after %.3fs idle (limit %.3fs) answered with RST, "
                     "peer %s", idle_s, self.after_s, writer.get_extra_info("peername"))
            reset_connection(writer)
            return False
        conn.receive_data(data)  # b"" tells h11 the peer closed
        return True
