"""A minimal TCP echo server, like fortio's ``tcp-echo`` (``fnet.TCPEchoServer``), with a
controllable server-side half-close for the half-close leak scenario (DESIGN.md §5.3).

Default behaviour (fortio's): every byte received is written back; when the client half-closes
(EOF), the server closes the whole connection, as fortio's ``io.Copy(conn, conn)`` followed by
``Close()`` does. Accepted sockets get Go's TCP keep-alive defaults.

Controlled close ("the upstream sends FIN"): on ``SIGUSR1`` — or ``--fin-after-s S`` seconds
after each accept — the server calls ``shutdown(SHUT_WR)`` on the open connection(s) (asyncio
``write_eof``: once the write buffer is flushed). It keeps reading afterwards and discards what
it reads (nothing can be echoed on a shut write side) until the peer's FIN or an error, then
closes. So the peer sees EOF while its own write side stays usable: a half-closed session.

Usage::

    python -m meshlab.apps.tcp_echo --port 9000 [--host 127.0.0.1] [--fin-after-s 2.5]
    kill -USR1 <pid>     # half-close every open connection now
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from meshlab.apps.netutil import ListenSpec, set_go_keepalive
from meshlab.errors import LabError

log = logging.getLogger("meshlab.apps.tcp_echo")

_CHUNK_BYTES = 32 * 1024


class EchoServer:
    """Connection handler that echoes and can half-close its connections on demand.

    Args:
        fin_after_s: half-close each connection this many seconds after accept (None: never).

    Attributes:
        open: writers of the connections currently open.
        half_closed: writers of the open connections whose write side was shut.
    """

    def __init__(self, fin_after_s: float | None = None) -> None:
        self.fin_after_s = fin_after_s
        self.open: set[asyncio.StreamWriter] = set()
        self.half_closed: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        return (f"EchoServer(open={len(self.open)}, half_closed={len(self.half_closed)}, "
                f"fin_after_s={self.fin_after_s})")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Echo one connection until the client's EOF (or an error), then close it; after a
        half-close, read and discard until the client's EOF."""
        set_go_keepalive(writer.get_extra_info("socket"))
        self.open.add(writer)
        timer = None
        if self.fin_after_s is not None:
            timer = asyncio.get_running_loop().call_later(self.fin_after_s, self.half_close,
                                                          writer)
        try:
            while data := await reader.read(_CHUNK_BYTES):
                if writer in self.half_closed:
                    continue  # write side shut: discard
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError) as err:
            log.debug("tcp echo connection error: %s", err)
        finally:
            if timer is not None:
                timer.cancel()
            self.open.discard(writer)
            self.half_closed.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def half_close(self, writer: asyncio.StreamWriter) -> bool:
        """``shutdown(SHUT_WR)`` one open connection (once its buffer is flushed).

        Returns:
            True if a FIN was scheduled now, False if it was closed or shut already.
        """
        if writer not in self.open or writer in self.half_closed or writer.is_closing():
            return False
        try:
            writer.write_eof()
        except (OSError, RuntimeError) as err:
            log.debug("tcp echo half-close failed: %s", err)
            return False
        self.half_closed.add(writer)
        return True

    def half_close_all(self) -> int:
        """Half-close every open connection; returns how many were shut now."""
        count = sum(self.half_close(w) for w in list(self.open))
        log.info("half-closed %d connection(s) (%d open)", count, len(self.open))
        return count


async def handle_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo one connection until the client's EOF (or an error), then close it."""
    await EchoServer().handle(reader, writer)


async def start_tcp_echo(spec: ListenSpec, handler: EchoServer | None = None) -> asyncio.Server:
    """Start listening; the returned server runs until closed.

    Args:
        spec: where to listen.
        handler: the connection handler (a fresh :class:`EchoServer` if None).

    Raises:
        LabError: the address cannot be bound.
    """
    handle = (handler or EchoServer()).handle
    try:
        return await asyncio.start_server(handle, spec.host, spec.port,
                                          reuse_address=True, backlog=4096)
    except OSError as err:
        raise LabError(f"tcp-echo: cannot listen on {spec}: {err}") from err


async def _run(spec: ListenSpec, fin_after_s: float | None) -> None:
    handler = EchoServer(fin_after_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # before listening: a SIGUSR1 sent once the port is up must never hit the default action
    loop.add_signal_handler(signal.SIGUSR1, handler.half_close_all)
    server = await start_tcp_echo(spec, handler)
    for sock in server.sockets:
        log.info("tcp-echo server listening on %s", sock.getsockname())
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad arguments, 1 if binding fails)."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.apps.tcp_echo",
                                     description="TCP echo server (fortio tcp-echo compatible); "
                                                 "SIGUSR1 half-closes every open connection")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (default 9000)")
    parser.add_argument("--host", default=None, help="address to bind (default: all)")
    parser.add_argument("--fin-after-s", type=float, default=None, metavar="S",
                        help="shutdown(SHUT_WR) each connection S seconds after accept")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: not a TCP port")
    if args.fin_after_s is not None and args.fin_after_s < 0:
        parser.error(f"--fin-after-s {args.fin_after_s}: must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_run(ListenSpec(args.host, args.port), args.fin_after_s))
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
