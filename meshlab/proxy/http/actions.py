"""Actions an :class:`~meshlab.proxy.http.core.HttpStream` returns for the I/O layer to execute.

Each event method of the stream returns exactly one action; the asyncio layer
(:mod:`~meshlab.proxy.http.conn`) performs it and reports the outcome back as the next event.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from meshlab.proxy.http.codec import Http1Request
from meshlab.proxy.upstream.codec import ResponseHead
from meshlab.proxy.upstream.router import Address


@dataclass(frozen=True)
class Connect:
    """Get a connection (pooled or new) to ``address`` within ``timeout_s``."""

    address: Address
    bind_ip: str | None
    timeout_s: float
    attempt: int


@dataclass(frozen=True)
class Backoff:
    """Wait ``delay_s`` before the next attempt (Envoy retry backoff, full jitter).

    A connection the failed attempt still holds is reset (HTTP/1 stream reset).
    """

    delay_s: float


@dataclass(frozen=True)
class DelayRequest:
    """Hold the request ``delay_s`` (fault filter delay), then report ``on_fault_delay_elapsed``."""

    delay_s: float


@dataclass(frozen=True)
class SendRequest:
    """Write ``request`` and ``body`` on the connection just obtained, then await the response."""

    request: Http1Request  # method, target, headers (h11.Request in tests)
    body: bytes


@dataclass(frozen=True)
class ForwardResponse:
    """Send these (rewritten) response headers downstream, then stream the upstream body."""

    response: ResponseHead


@dataclass(frozen=True)
class SendLocalReply:
    """Send a generated response downstream (then close when ``close``)."""

    response: h11.Response
    body: bytes
    close: bool


@dataclass(frozen=True)
class ResetDownstream:
    """Abort the downstream connection (response already started)."""


@dataclass(frozen=True)
class Done:
    """Nothing more to send for this stream."""


Action = (Connect | Backoff | DelayRequest | SendRequest | ForwardResponse | SendLocalReply
          | ResetDownstream | Done)
