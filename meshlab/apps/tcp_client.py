"""A scriptable TCP client: the "app" of the half-close and conntrack scenarios (DESIGN.md §5.3-4).

It connects (optionally from a fixed local port, ``SO_REUSEADDR``, to reuse an ephemeral port),
sends a text, reads until EOF (or ``--hold-s``), then waits ``--close-delay-s`` before calling
``close()`` — an app that notices the peer's FIN late and closes late. Run in a pod's netns, its
connection to a Service goes through the pod's sidecar (iptables REDIRECT to 15001).

Usage::

    python -m meshlab.apps.tcp_client --connect tcp-echo:9000 [--bind-port 40000] \\
        [--send hello] [--close-delay-s 8] [--connect-timeout-s 5] [--hold-s 60] \\
        [--result /tmp/r.json]

Progress goes to stdout as JSON lines (``{"event": "connected" | "received" | "eof" | "closed",
"t_epoch_s": ..., ...}``; ``received`` per chunk read, e.g. the echo that proves the upstream
accepted). The final result is written atomically (temp file + ``rename``) to ``--result``
(stdout without it)::

    {"connect_s": float | null,          # seconds connect() took (null: it failed)
     "local_port": int | null,           # the local port used
     "eof_after_s": float | null,        # seconds from connected to the peer's FIN (null: none)
     "closed_at_epoch_s": float | null,  # time.time() right after close()
     "received_bytes": int,
     "error": str | null,                # e.g. "connect: timed out", "read: [Errno 104] ..."
     "error_phase": "connect" | "send" | "read" | "close" | "signal" | null}

Exit status: 0 without error, 1 with one, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from meshlab.missing import dry_run_active, not_measured

_CHUNK_BYTES = 32 * 1024


@dataclass
class ClientResult:
    """What one client run did (see the module docstring for the JSON shape)."""

    connect_s: float | None = None
    local_port: int | None = None
    eof_after_s: float | None = None
    closed_at_epoch_s: float | None = None
    received_bytes: int = 0
    error: str | None = None
    error_phase: str | None = None


class _Terminated(Exception):
    """SIGTERM/SIGINT arrived: close at once and still write the result."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t_epoch_s": round(time.time(), 6), **fields}), flush=True)


def read_events(path: Path) -> dict[str, dict[str, Any]]:
    """The progress events a client wrote to ``path`` so far, last one per name (a line still
    being written is skipped); in a dry run (:func:`meshlab.missing.dry_run_scope`: no client
    ran), a Missing ``events in <file>``."""
    if dry_run_active():
        return not_measured(f"events in {path.name}")  # type: ignore[return-value]
    events: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        events[rec.get("event", "")] = rec
    return events


def wait_event(path: Path, event: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll ``path`` until the client reported ``event``; returns that event's fields.

    Raises:
        PollTimeout: not reported within ``timeout_s``.
    """
    from meshlab.polling import wait_until

    return wait_until(lambda: read_events(path), lambda ev: event in ev, timeout_s=timeout_s,
                      what=f"tcp_client event {event!r} in {path.name}", every_s=0.01)[event]


def write_result(result: ClientResult, path: Path | None) -> None:
    """Write ``result`` as JSON to ``path`` atomically (stdout when ``path`` is None)."""
    text = json.dumps(asdict(result), sort_keys=True)
    if path is None:
        print(text, flush=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def run_client(host: str, port: int, *, bind_port: int | None = None, send: str = "",
               close_delay_s: float = 0.0, connect_timeout_s: float = 5.0,
               hold_s: float = 60.0) -> ClientResult:
    """Connect, send, read until EOF or ``hold_s``, wait ``close_delay_s``, close.

    Args:
        host: name or address to connect to (resolved with the pod's ``/etc/hosts``).
        port: TCP port.
        bind_port: local port to bind first (``SO_REUSEADDR``), or None for an ephemeral one.
        send: text sent right after connecting (nothing if empty).
        close_delay_s: seconds between the end of reading and ``close()``.
        connect_timeout_s: connect() timeout in seconds.
        hold_s: longest time to wait for the peer's FIN, in seconds.

    Returns:
        The :class:`ClientResult`; errors are recorded in it, never raised (except signals).
    """
    result = ClientResult()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    phase = "connect"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind_port is not None:
            sock.bind(("0.0.0.0", bind_port))
        sock.settimeout(connect_timeout_s)
        start = time.monotonic()
        try:
            sock.connect((host, port))
        finally:
            result.local_port = sock.getsockname()[1] or None
        connected = time.monotonic()
        result.connect_s = round(connected - start, 6)
        _emit("connected", local_port=result.local_port, connect_s=result.connect_s)
        phase = "send"
        if send:
            sock.sendall(send.encode())
        phase = "read"
        deadline = connected + hold_s
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(_CHUNK_BYTES)
            except TimeoutError:
                break
            if not data:
                result.eof_after_s = round(time.monotonic() - connected, 6)
                _emit("eof", eof_after_s=result.eof_after_s)
                break
            result.received_bytes += len(data)
            _emit("received", bytes=len(data), received_bytes=result.received_bytes)
        phase = "close"
        time.sleep(close_delay_s)
    except _Terminated as exc:
        result.error, result.error_phase = f"terminated by {exc}", "signal"
    except OSError as exc:
        result.error, result.error_phase = f"{phase}: {exc or type(exc).__name__}", phase
    finally:
        sock.close()
        result.closed_at_epoch_s = round(time.time(), 6)
        _emit("closed", error=result.error)
    return result


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 error recorded, 2 bad arguments)."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.apps.tcp_client",
                                     description="TCP client that closes late")
    parser.add_argument("--connect", required=True, type=_host_port, metavar="HOST:PORT")
    parser.add_argument("--bind-port", type=int, default=None, metavar="P")
    parser.add_argument("--send", default="", metavar="TEXT")
    parser.add_argument("--close-delay-s", type=float, default=0.0, metavar="D")
    parser.add_argument("--connect-timeout-s", type=float, default=5.0, metavar="T")
    parser.add_argument("--hold-s", type=float, default=60.0, metavar="H")
    parser.add_argument("--result", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    if args.bind_port is not None and not 0 < args.bind_port <= 65535:
        parser.error(f"--bind-port {args.bind_port}: not a TCP port")
    for flag in ("close_delay_s", "hold_s"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')}: must be >= 0")
    if args.connect_timeout_s <= 0:
        parser.error("--connect-timeout-s: must be > 0")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    host, port = args.connect
    result = run_client(host, port, bind_port=args.bind_port, send=args.send,
                        close_delay_s=args.close_delay_s,
                        connect_timeout_s=args.connect_timeout_s, hold_s=args.hold_s)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    write_result(result, args.result)
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(main())
