"""The downstream socket's read side for :mod:`~meshlab.proxy.http.conn` (asyncio).

- :class:`DownstreamReader`: the single reader of a downstream connection; a pending read doubles
  as the close watcher while a stream waits on the upstream.
- :func:`delayed_close`: Envoy's ``delayed_close_timeout`` (HCM default 1000 ms, ENVOY.md §8).
  After a local reply that closes the connection (``FlushWriteAndDelay``), Envoy flushes the
  reply and then waits up to the timeout for the peer to close first, discarding what it reads,
  so the client sees the response before a RST could destroy it.
"""

from __future__ import annotations

import asyncio

from meshlab.proxy.upstream.pool import READ_CHUNK

#: Cap on bytes discarded while waiting for the peer to close (then close at once).
DELAYED_CLOSE_DISCARD_BYTES = 1 << 20


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

    def __repr__(self) -> str:
        return f"DownstreamReader(eof={self.eof}, stashed={len(self._stash)})"


async def delayed_close(down: DownstreamReader, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the peer to close, discarding its bytes.

    Args:
        down: the connection's reader.
        timeout_s: Envoy ``delayed_close_timeout``; 0 returns at once.

    Returns:
        True when the peer closed first, False on timeout (the caller then closes).
    """
    if timeout_s <= 0 or down.eof:
        return down.eof
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    discarded = 0
    while discarded <= DELAYED_CLOSE_DISCARD_BYTES:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            data = await asyncio.wait_for(asyncio.shield(down.pending()), remaining)
        except TimeoutError:
            return False
        down.take()
        if not data:
            return True
        discarded += len(data)
    return False
