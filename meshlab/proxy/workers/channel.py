"""The control channel between a sidecar's main process and one worker: a socketpair carrying
request/reply frames (4-byte big-endian length, then a ``marshal``-ed value).

Frames hold only plain values (str, int, float, bool, None, tuples, lists, dicts), which
``marshal`` encodes without running code and without importing ``pickle`` into every
process. Both ends are processes of the same sidecar forked from one parent; the channel
never carries anything from the network. The main sends ``(op, arg)`` and awaits one
reply per request (:class:`WorkerLink`); the worker answers each request at once from its event
loop (:class:`ControlProtocol`). End of file on the worker side means the main is gone: the
worker stops, so a killed main never leaves workers serving.
"""

from __future__ import annotations

import asyncio
import marshal
import socket
import struct
from collections.abc import Callable
from typing import Any

_LEN = struct.Struct("!I")
#: Largest frame accepted (a snapshot of a very busy worker is a few hundred kB).
MAX_FRAME = 64 << 20


class ChannelError(ConnectionError):
    """The other end closed the channel or sent a frame that cannot be decoded."""


def encode(obj: object) -> bytes:
    """One frame carrying ``obj``."""
    body = marshal.dumps(obj)
    return _LEN.pack(len(body)) + body


class ControlProtocol(asyncio.Protocol):
    """Worker end: answers each ``(op, arg)`` frame with ``handler(op, arg)``'s result.

    Args:
        handler: ``(op, arg) -> value``; the reply is ``("ok", value)``, or
            ``("error", repr(exc))`` when it raised, so a bad request never stops the worker.
        on_close: called once when the main's end is gone (EOF or error).
    """

    def __init__(self, handler: Callable[[str, Any], object], on_close: Callable[[], None]) -> None:
        self.handler = handler
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= _LEN.size:
            (size,) = _LEN.unpack_from(buf)
            if size > MAX_FRAME:
                self.transport.close()  # type: ignore[union-attr]
                return
            if len(buf) < _LEN.size + size:
                return
            body = bytes(buf[_LEN.size:_LEN.size + size])
            del buf[:_LEN.size + size]
            try:
                op, arg = marshal.loads(body)
                reply: tuple[str, object] = ("ok", self.handler(op, arg))
            except Exception as exc:  # noqa: BLE001 - the worker keeps serving
                reply = ("error", repr(exc))
            self.transport.write(encode(reply))  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_close()


class WorkerLink:
    """Main end of one worker's channel: :meth:`call` sends a request and returns the reply.

    Calls are serialised (one in flight per worker), so replies match requests.

    Args:
        index: the worker's index (for messages).
        sock: the main's end of the socketpair.
    """

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def call(self, op: str, arg: object = None) -> Any:
        """Send ``(op, arg)``; the worker's answer.

        Raises:
            ChannelError: the worker is gone, answered with a broken frame, or failed to
                carry out the request (the message names the op and the worker's error).
        """
        async with self._lock:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(sock=self.sock)
            reader, writer = self._reader, self._writer
            try:
                writer.write(encode((op, arg)))
                await writer.drain()
                (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))  # type: ignore[union-attr]
                if size > MAX_FRAME:
                    raise ChannelError(f"worker {self.index}: frame of {size} bytes")
                body = await reader.readexactly(size)  # type: ignore[union-attr]
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise ChannelError(f"worker {self.index}: control channel closed ({exc!r})") \
                    from None
        try:
            status, value = marshal.loads(body)
        except Exception as exc:  # noqa: BLE001
            raise ChannelError(f"worker {self.index}: undecodable reply ({exc!r})") from None
        if status != "ok":
            raise ChannelError(f"worker {self.index}: {op} failed: {value}")
        return value

    def __repr__(self) -> str:
        return f"WorkerLink({self.index})"
