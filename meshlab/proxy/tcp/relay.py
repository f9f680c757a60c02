"""Bidirectional byte relay with Envoy's half-close semantics, on asyncio Protocols (ENVOY.md §8).

Used by :mod:`meshlab.proxy.tcp.proxy`. Each side of a session is a :class:`RelaySide`
protocol: bytes read on one side are written to the other in the read callback (no task and no
stream object per chunk). A side whose write buffer passes its high-water mark pauses reading on
the other side until it drains (Envoy's watermark flow control). A FIN read from one side is
forwarded with ``write_eof``, which calls ``shutdown(SHUT_WR)`` only once that transport's write
buffer is empty, as Envoy's ``RawBufferSocket::doWrite`` does with ``end_stream``
(``tcp_proxy.cc``, ``connection_impl.cc``). Bytes and a FIN that arrive from the downstream
while the upstream still connects are kept and forwarded once it is attached.

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
import contextlib
import enum
from collections.abc import Callable


class Outcome(enum.Enum):
    """How a relayed session ended."""

    BOTH_CLOSED = "both_closed"
    UPSTREAM_RESET = "upstream_reset"
    DOWNSTREAM_RESET = "downstream_reset"
    IDLE_TIMEOUT = "idle_timeout"


#: Envoy's local close reason for the idle timeout (``LocalCloseReasons::TcpSessionIdleTimeout``).
IDLE_TIMEOUT_REASON = "tcp_session_idle_timeout"
#: Bytes kept from the downstream while the upstream connects before its reading pauses.
PENDING_HIGH_BYTES = 1 << 18
_OTHER = {"downstream": "upstream", "upstream": "downstream"}


def _noop(_: int) -> None:
    pass


class RelaySide(asyncio.Protocol):
    """One socket of a :class:`Relay` (``name``: ``downstream`` or ``upstream``)."""

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing_by_us = False
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.attached(self)

    def data_received(self, data: bytes) -> None:
        self.relay.data(self.name, data)

    def eof_received(self) -> bool:
        self.relay.eof(self.name)
        return True  # keep our write side open: the other direction still relays

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.relay.side_lost(self.name, exc)

    def pause_writing(self) -> None:
        self.relay.pause_from(_OTHER[self.name])

    def resume_writing(self) -> None:
        self.relay.resume_from(_OTHER[self.name])

    def __repr__(self) -> str:
        return f"RelaySide({self.name}, attached={self.transport is not None})"


class Relay:
    """One downstream↔upstream session (see the module rules).

    Args:
        idle_timeout_s: TCP proxy ``idle_timeout``; 0 or None disables it.
        on_downstream_bytes: called with each chunk size read from the downstream.
        on_upstream_bytes: called with each chunk size read from the upstream.

    Attributes:
        downstream, upstream: the two :class:`RelaySide` protocols; the downstream one goes on
            the accepted transport at once, the upstream one is the factory result of the
            upstream connect.
        rx_bytes: bytes read from the downstream (``%BYTES_RECEIVED%``).
        tx_bytes: bytes read from the upstream and written downstream (``%BYTES_SENT%``).
        last_fin: ``"downstream"`` or ``"upstream"``: whose FIN completed the session.
        draining: set while a Drainer flushes the upstream; done when it is closed.
        local_close_reason: Envoy's local close reason, if any.
    """

    def __init__(self, *, idle_timeout_s: float | None,
                 on_downstream_bytes: Callable[[int], None] = _noop,
                 on_upstream_bytes: Callable[[int], None] = _noop) -> None:
        """Bytes are counted (``rx_bytes``, ``tx_bytes``, the callbacks) once relayed: what the
        downstream sends before the upstream is attached counts when it is forwarded."""
        self._loop = asyncio.get_running_loop()
        self.idle_timeout_s = idle_timeout_s or None
        self._on_bytes = {"downstream": on_downstream_bytes, "upstream": on_upstream_bytes}
        self.downstream = RelaySide(self, "downstream")
        self.upstream = RelaySide(self, "upstream")
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_fin: str | None = None
        self.draining: asyncio.Future[None] | None = None
        self.local_close_reason: str | None = None
        self._fins: list[str] = []
        self._pending: list[bytes] = []  # downstream bytes read before the upstream is attached
        self._pending_fin = False
        self._last_activity = self._loop.time()
        self._done: asyncio.Future[Outcome] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    def count_with(self, on_downstream_bytes: Callable[[int], None],
                   on_upstream_bytes: Callable[[int], None]) -> None:
        """Set the byte callbacks (before the upstream is attached)."""
        self._on_bytes = {"downstream": on_downstream_bytes, "upstream": on_upstream_bytes}

    def side(self, name: str) -> RelaySide:
        """The :class:`RelaySide` called ``name``."""
        return self.downstream if name == "downstream" else self.upstream

    async def run(self) -> Outcome:
        """Relay until the session ends, close both sides accordingly, return the outcome.

        Call once the upstream is connected (its transport carries :attr:`upstream`).
        """
        self._touch()
        if self.idle_timeout_s:
            self._timer = self._loop.call_at(self._last_activity + self.idle_timeout_s,
                                             self._check_idle)
        try:
            outcome = await self._done
        finally:
            if self._timer is not None:
                self._timer.cancel()
        self._close(outcome)
        return outcome

    # -- callbacks from the sides ---------------------------------------------------------------

    def attached(self, side: RelaySide) -> None:
        """A side's transport is known; the upstream gets what the downstream already sent."""
        if side is not self.upstream:
            return
        transport = side.transport
        assert transport is not None
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self.rx_bytes += len(data)
            self._on_bytes["downstream"](len(data))
            transport.write(data)
            self._resume(self.downstream)
        if self._pending_fin:
            self._write_eof("upstream")

    def data(self, src: str, data: bytes) -> None:
        """``data`` read from ``src``: count it and write it to the other side."""
        self._touch()
        dst = self.side(_OTHER[src])
        if dst.transport is None:  # the upstream is still connecting
            self._pending.append(data)
            if sum(map(len, self._pending)) > PENDING_HIGH_BYTES:
                self._pause(self.side(src))
            return
        n = len(data)
        if src == "downstream":
            self.rx_bytes += n
        else:
            self.tx_bytes += n
        self._on_bytes[src](n)
        if dst.transport.is_closing():
            self._finish(_reset(dst.name))
            return
        dst.transport.write(data)

    def eof(self, src: str) -> None:
        """A FIN from ``src``: forward it (after the other side's buffer is flushed)."""
        self._touch()  # Envoy's TcpProxy resets its idle timer on end_stream (a FIN) too
        dst = _OTHER[src]
        if self.side(dst).transport is None:
            self._pending_fin = True
        elif not self._write_eof(dst):
            return
        self._fins.append(src)
        if len(self._fins) == 2:
            self.last_fin = src
            self._finish(Outcome.BOTH_CLOSED)

    def side_lost(self, name: str, exc: Exception | None) -> None:
        """A side's connection is gone: a reset unless we closed it or both FINs were seen."""
        if self._done.done() or self.side(name).closing_by_us:
            return
        if exc is not None or name not in self._fins:
            self._finish(_reset(name))

    def pause_from(self, src: str) -> None:
        """The other side cannot take more: stop reading ``src``."""
        self._pause(self.side(src))

    def resume_from(self, src: str) -> None:
        """The other side drained: read ``src`` again (its bytes were flushed: activity)."""
        self._touch()
        self._resume(self.side(src))

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _pause(side: RelaySide) -> None:
        if side.transport is not None and not side.reading_paused:
            side.reading_paused = True
            with contextlib.suppress(RuntimeError):
                side.transport.pause_reading()

    @staticmethod
    def _resume(side: RelaySide) -> None:
        # only a pause of ours is undone: resuming a transport that already read EOF would
        # read (and report) the EOF again
        if side.transport is not None and side.reading_paused:
            side.reading_paused = False
            with contextlib.suppress(RuntimeError):
                side.transport.resume_reading()

    def _write_eof(self, dst: str) -> bool:
        transport = self.side(dst).transport
        try:
            assert transport is not None
            transport.write_eof()  # shutdown(SHUT_WR) once the buffer is flushed
        except (ConnectionError, OSError, RuntimeError, AssertionError):
            self._finish(_reset(dst))
            return False
        return True

    def _finish(self, outcome: Outcome) -> None:
        if not self._done.done():
            self._done.set_result(outcome)

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _check_idle(self) -> None:
        assert self.idle_timeout_s is not None
        deadline = self._last_activity + self.idle_timeout_s
        if self._loop.time() >= deadline:
            self.local_close_reason = IDLE_TIMEOUT_REASON
            self._finish(Outcome.IDLE_TIMEOUT)
        else:
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def _close(self, outcome: Outcome) -> None:
        down, up = self.downstream, self.upstream
        down.closing_by_us = up.closing_by_us = True
        down_t, up_t = down.transport, up.transport
        assert down_t is not None and up_t is not None
        if outcome is Outcome.IDLE_TIMEOUT:
            down_t.abort()
            up_t.abort()
        elif outcome is Outcome.UPSTREAM_RESET:
            up_t.abort()
            down_t.close()
        elif outcome is Outcome.DOWNSTREAM_RESET:
            down_t.abort()
            if up_t.get_write_buffer_size() > 0 and not up_t.is_closing():
                self.draining = asyncio.ensure_future(self._drain())
            else:
                up_t.close()
        else:
            down_t.close()
            up_t.close()

    async def _drain(self) -> None:
        """Envoy's Drainer: flush the upstream, aborting it when it makes no progress for the
        idle timeout."""
        transport = self.upstream.transport
        assert transport is not None
        transport.close()  # flushes, then connection_lost
        while True:
            before = transport.get_write_buffer_size()
            try:
                await asyncio.wait_for(asyncio.shield(self.upstream.lost), self.idle_timeout_s)
                return
            except TimeoutError:
                if transport.get_write_buffer_size() >= before:
                    transport.abort()
                    return

    def __repr__(self) -> str:
        return (f"Relay(rx={self.rx_bytes}, tx={self.tx_bytes}, fins={self._fins}, "
                f"idle_timeout_s={self.idle_timeout_s})")


def _reset(side: str) -> Outcome:
    return Outcome.DOWNSTREAM_RESET if side == "downstream" else Outcome.UPSTREAM_RESET
