"""A minimal TCP echo server, like fortio's ``tcp-echo`` (``fnet.TCPEchoServer``).

Every byte received is written back; when the client half-closes (EOF), the server closes the
whole connection, as fortio's ``io.Copy(conn, conn)`` followed by ``Close()`` does. Accepted
sockets get Go's TCP keep-alive defaults.

Usage::

    python -m meshlab.apps.tcp_echo --port 9000 [--host 127.0.0.1]
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


async def handle_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo one connection until the client's EOF (or an error), then close it."""
    set_go_keepalive(writer.get_extra_info("socket"))
    try:
        while data := await reader.read(_CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
    except OSError as err:
        log.debug("tcp echo connection error: %s", err)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def start_tcp_echo(spec: ListenSpec) -> asyncio.Server:
    """Start listening; the returned server runs until closed.

    Raises:
        LabError: the address cannot be bound.
    """
    try:
        return await asyncio.start_server(handle_echo, spec.host, spec.port,
                                          reuse_address=True, backlog=4096)
    except OSError as err:
        raise LabError(f"tcp-echo: cannot listen on {spec}: {err}") from err


async def _run(spec: ListenSpec) -> None:
    server = await start_tcp_echo(spec)
    for sock in server.sockets:
        log.info("tcp-echo server listening on %s", sock.getsockname())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad arguments, 1 if binding fails)."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.apps.tcp_echo",
                                     description="TCP echo server (fortio tcp-echo compatible)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (default 9000)")
    parser.add_argument("--host", default=None, help="address to bind (default: all)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: not a TCP port")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_run(ListenSpec(args.host, args.port)))
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
