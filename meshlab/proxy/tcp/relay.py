"""Bidirectional byte relay with Envoy's half-close semantics (ENVOY.md §8).

Used by :mod:`meshlab.proxy.tcp.proxy`. Both sides are asyncio streams: ``StreamReaderProtocol``
keeps a socket open for writing after its peer's FIN, and ``write_eof`` calls
``shutdown(SHUT_WR)`` only once the transport's write buffer is empty, which is what Envoy's
``RawBufferSocket::doWrite`` does with ``end_stream`` (``tcp_proxy.cc``, ``connection_impl.cc``).

Rules (who ended → :class:`Outcome` → how each socket is closed)::

    FIN from both sides (each forwarded) → BOTH_CLOSED      both close after flushing
    read/write error on the upstream      → UPSTREAM_RESET   downstream FlushWrite
    read/write error on the downstream    → DOWNSTREAM_RESET upstream FlushWrite; if bytes are
                                                            still buffered it becomes a Drainer
    no byte read or flushed for idle_timeout_s → IDLE_TIMEOUT both NoFlush

There is deliberately no timer for a half-closed session: after one FIN the other direction
relays until its own FIN, an error, or the idle timeout.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from meshlab.proxy.upstream.connection import READ_CHUNK


class Outcome(enum.Enum):
    """How a relayed session ended."""

    BOTH_CLOSED = "both_closed"
    UPSTREAM_RESET = "upstream_reset"
    DOWNSTREAM_RESET = "downstream_reset"
    IDLE_TIMEOUT = "idle_timeout"


#: Envoy's local close reason for the idle timeout (``LocalCloseReasons::TcpSessionIdleTimeout``).
IDLE_TIMEOUT_REASON = "tcp_session_idle_timeout"


def _noop(_: int) -> None:
    pass


class Relay:
    """One downstream↔upstream session.

    Args:
        down_reader, down_writer: the accepted (downstream) connection.
        up_reader, up_writer: the upstream connection.
        idle_timeout_s: TCP proxy ``idle_timeout``; 0 or None disables it.
        on_downstream_bytes: called with each chunk size read from the downstream.
        on_upstream_bytes: called with each chunk size read from the upstream.

    Attributes:
        rx_bytes: bytes read from the downstream (``%BYTES_RECEIVED%``).
        tx_bytes: bytes read from the upstream and written downstream (``%BYTES_SENT%``).
        last_fin: ``"downstream"`` or ``"upstream"``: whose FIN completed the session.
        draining: set while a Drainer flushes the upstream; done when it is closed.
        local_close_reason: Envoy's local close reason, if any.
    """

    def __init__(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, *,
                 idle_timeout_s: float | None,
                 on_downstream_bytes: Callable[[int], None] = _noop,
                 on_upstream_bytes: Callable[[int], None] = _noop) -> None:
        self._down = (down_reader, down_writer)
        self._up = (up_reader, up_writer)
        self.idle_timeout_s = idle_timeout_s or None
        self._on_bytes = {"downstream": on_downstream_bytes, "upstream": on_upstream_bytes}
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_fin: str | None = None
        self.draining: asyncio.Future[None] | None = None
        self.local_close_reason: str | None = None
        self._fins: list[str] = []
        self._last_activity = 0.0
        self._done: asyncio.Future[Outcome] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def run(self) -> Outcome:
        """Relay until the session ends, close both sides accordingly, return the outcome."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._last_activity = loop.time()
        if self.idle_timeout_s:
            self._timer = loop.call_at(self._last_activity + self.idle_timeout_s, self._check_idle)
        pumps = [asyncio.ensure_future(self._pump("downstream")),
                 asyncio.ensure_future(self._pump("upstream"))]
        try:
            outcome = await self._done
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        self._close(outcome)
        return outcome

    # -- internals ------------------------------------------------------------------------------

    def _finish(self, outcome: Outcome) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(outcome)

    def _touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    def _check_idle(self) -> None:
        assert self.idle_timeout_s is not None
        loop = asyncio.get_running_loop()
        deadline = self._last_activity + self.idle_timeout_s
        if loop.time() >= deadline:
            self.local_close_reason = IDLE_TIMEOUT_REASON
            self._finish(Outcome.IDLE_TIMEOUT)
        else:
            self._timer = loop.call_at(deadline, self._check_idle)

    async def _pump(self, src: str) -> None:
        """Copy ``src`` → the other side; forward its FIN as ``write_eof``."""
        reader = (self._down if src == "downstream" else self._up)[0]
        writer = (self._up if src == "downstream" else self._down)[1]
        dst = "upstream" if src == "downstream" else "downstream"
        count = self._on_bytes[src]
        while True:
            try:
                data = await reader.read(READ_CHUNK)
            except (ConnectionError, OSError):
                self._finish(_reset(src))
                return
            if not data:
                break
            self._touch()
            n = len(data)
            if src == "downstream":
                self.rx_bytes += n
            else:
                self.tx_bytes += n
            count(n)
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError, RuntimeError):
                self._finish(_reset(dst))
                return
            self._touch()
        self._touch()  # Envoy's TcpProxy resets its idle timer on end_stream (a FIN) too
        try:
            writer.write_eof()  # shutdown(SHUT_WR) once the buffer is flushed
        except (ConnectionError, OSError, RuntimeError):
            self._finish(_reset(dst))
            return
        self._fins.append(src)
        if len(self._fins) == 2:
            self.last_fin = src
            self._finish(Outcome.BOTH_CLOSED)

    def _close(self, outcome: Outcome) -> None:
        down_w, up_w = self._down[1], self._up[1]
        if outcome is Outcome.IDLE_TIMEOUT:
            down_w.transport.abort()
            up_w.transport.abort()
        elif outcome is Outcome.UPSTREAM_RESET:
            up_w.transport.abort()
            down_w.close()
        elif outcome is Outcome.DOWNSTREAM_RESET:
            down_w.transport.abort()
            if up_w.transport.get_write_buffer_size() > 0 and not up_w.transport.is_closing():
                self.draining = asyncio.ensure_future(self._drain())
            else:
                up_w.close()
        else:
            down_w.close()
            up_w.close()

    async def _drain(self) -> None:
        """Envoy's Drainer: flush the upstream, aborting it when it makes no progress for the
        idle timeout."""
        writer = self._up[1]
        transport = writer.transport
        writer.close()
        while True:
            before = transport.get_write_buffer_size()
            try:
                await asyncio.wait_for(asyncio.shield(writer.wait_closed()), self.idle_timeout_s)
                return
            except TimeoutError:
                if transport.get_write_buffer_size() >= before:
                    transport.abort()
                    return
            except Exception:  # noqa: BLE001 - the connection died while draining: done
                return

    def __repr__(self) -> str:
        return (f"Relay(rx={self.rx_bytes}, tx={self.tx_bytes}, fins={self._fins}, "
                f"idle_timeout_s={self.idle_timeout_s})")


def _reset(side: str) -> Outcome:
    return Outcome.DOWNSTREAM_RESET if side == "downstream" else Outcome.UPSTREAM_RESET
