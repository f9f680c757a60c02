"""The downstream socket of one HTTP connection as an asyncio Protocol (see :mod:`.conn`).

:class:`DownstreamConnection` is the I/O half of :class:`~meshlab.proxy.http.conn.HttpConnection`:

- bytes read are kept in an inbox until the connection's driver coroutine takes them
  (:meth:`~DownstreamConnection.read`); past ``4 × READ_CHUNK`` unread bytes reading pauses;
- one waiter future per connection: every socket event (data, FIN, loss, writable again), an
  upstream event (the upstream connection's ``waker``) or a timer wakes it, and the driver
  re-checks what it waits for (:meth:`~DownstreamConnection.until`). A wait is one future and at
  most one timer handle: no task, no ``asyncio.wait`` per request;
- a FIN or a lost connection ends what the stream waits for with ``closed`` (Envoy's
  early-close detection: ``DC``); pipelined bytes stay in the inbox for the next request;
- :meth:`~DownstreamConnection.delayed_close` is Envoy's ``delayed_close_timeout`` (HCM default
  1000 ms, ENVOY.md §8): after a local reply that closes the connection (``FlushWriteAndDelay``)
  Envoy flushes the reply and waits up to the timeout for the peer to close first, discarding
  what it reads, so the client sees the response before a RST could destroy it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshlab.proxy.http.context import Deadlines
from meshlab.proxy.upstream.connection import READ_CHUNK

#: Cap on bytes discarded while waiting for the peer to close (then close at once).
DELAYED_CLOSE_DISCARD_BYTES = 1 << 20
#: Unread bytes above which the socket stops being read until the driver catches up.
INBOX_HIGH_BYTES = READ_CHUNK * 4

#: :meth:`DownstreamConnection.until` outcomes besides the deadline kinds ``route``/``per_try``.
OK, CLOSED = "ok", "closed"


class DownstreamConnection(asyncio.Protocol):
    """Socket side of one downstream connection (see the module rules).

    Attributes:
        transport: the accepted connection's transport.
        eof: the client sent FIN or the connection was lost.
        lost: the connection is gone (nothing more can be written).
        write_paused: the transport's write buffer is above its high-water mark.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.write_paused = False
        self._loop = asyncio.get_running_loop()
        self._inbox: list[bytes] = []
        self._inbox_bytes = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._inbox.append(data)
        self._inbox_bytes += len(data)
        if self._inbox_bytes > INBOX_HIGH_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.wake()
        return True  # keep the write side open: the reply or a delayed close still flushes

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        self.wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake()

    # -- waiting --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the driver (safe to call at any time, from any callback)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, deadline: float | None = None) -> None:
        """Sleep until the next :meth:`wake` or until loop time ``deadline``."""
        fut = self._loop.create_future()
        self._waiter = fut
        timer = self._loop.call_at(deadline, self.wake) if deadline is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def until(self, ready: Callable[[], object] | None, dl: Deadlines,
                    at: float | None = None) -> str:
        """Wait for ``ready()`` (or loop time ``at``) against downstream close and deadlines.

        Returns:
            ``"ok"`` | ``"closed"`` | ``"route"`` / ``"per_try"`` (the deadline that passed).
        """
        loop = self._loop
        while True:
            if ready is not None and ready():
                return OK
            if self.eof:
                return CLOSED
            now = loop.time()
            if at is not None and now >= at:
                return OK
            deadline, kind = dl.next()
            if deadline is not None and now >= deadline:
                return kind
            if at is not None and (deadline is None or at < deadline):
                deadline = at
            await self.wait(deadline)

    # -- reading and writing --------------------------------------------------------------------

    async def read(self) -> bytes:
        """The bytes read since the last call, waiting for some; ``b""`` at EOF."""
        while not self._inbox:
            if self.eof:
                return b""
            await self.wait()
        return self._take()

    def _take(self) -> bytes:
        inbox = self._inbox
        data = inbox[0] if len(inbox) == 1 else b"".join(inbox)
        inbox.clear()
        self._inbox_bytes = 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    def write(self, data: bytes) -> bool:
        """Write ``data`` unless the connection is gone; False when it is."""
        if self.lost or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def delayed_close(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the peer to close, discarding its bytes.

        Args:
            timeout_s: Envoy ``delayed_close_timeout``; 0 returns at once.

        Returns:
            True when the peer closed first, False on timeout (the caller then closes).
        """
        if timeout_s <= 0 or self.eof:
            return self.eof
        deadline = self._loop.time() + timeout_s
        discarded = 0
        while discarded <= DELAYED_CLOSE_DISCARD_BYTES:
            if self._inbox:
                discarded += len(self._take())
                continue
            if self.eof:
                return True
            if self._loop.time() >= deadline:
                return False
            await self.wait(deadline)
        return False

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eof={self.eof}, unread={self._inbox_bytes}, "
                f"write_paused={self.write_paused})")
