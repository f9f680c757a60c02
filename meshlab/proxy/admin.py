"""Admin (127.0.0.1:15000), Envoy Prometheus (15090) and agent (15020) endpoints (ENVOY.md §4, §5).

Request routing is a pure function (:func:`admin_response` etc.) so it is unit-testable; the
asyncio part is a tiny keep-alive HTTP/1.1 server over h11.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import h11

from meshlab import __version__
from meshlab.proxy.http_headers import http_date
from meshlab.proxy.stats import StatsStore
from meshlab.proxy.stats_render import render_json, render_prometheus, render_text

PROM_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_POST_ONLY = ("/quitquitquit", "/reset_counters", "/healthcheck/fail", "/healthcheck/ok",
              "/drain_listeners", "/logging")
_GET = ("/stats", "/stats/prometheus", "/ready", "/server_info", "/listeners")


@dataclass(frozen=True)
class Reply:
    """An admin response."""

    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=UTF-8"


def _usage() -> bytes:
    cmds = "".join(f"  {p}\n" for p in sorted(_GET + _POST_ONLY))
    return f"invalid path. admin commands are:\n{cmds}".encode()


def admin_response(method: str, target: str, store: StatsStore, *, server_state: int = 0,
                   on_quit: Callable[[], None] | None = None, start_s: float = 0.0,
                   listeners: tuple[str, ...] = ()) -> Reply:
    """Answer one request to the Envoy admin port.

    Args:
        method: HTTP method.
        target: request target (path and query).
        store: the stats store.
        server_state: ``server.state`` (0 LIVE).
        on_quit: called on ``POST /quitquitquit``.
        start_s: process start (epoch seconds) for ``/server_info``.
        listeners: ``name::address`` lines for ``/listeners``.
    """
    url = urlsplit(target)
    path, query = url.path, parse_qs(url.query, keep_blank_values=True)
    if path in _POST_ONLY:
        if method != "POST":
            return Reply(400, b"Method GET not allowed, POST required.\n")
        if path == "/quitquitquit":
            if on_quit is not None:
                on_quit()
            return Reply(200, b"OK\n")
        if path == "/reset_counters":
            store.reset_counters()
            return Reply(200, b"OK\n")
        return Reply(200, b"OK\n")
    if method not in ("GET", "HEAD", "POST"):
        return Reply(405, b"")
    filt = query.get("filter", [None])[0]
    used_only = "usedonly" in query
    if path == "/stats":
        fmt = query.get("format", ["text"])[0]
        if fmt == "json":
            return Reply(200, render_json(store, filt, used_only).encode(), b"application/json")
        if fmt == "prometheus":
            return Reply(200, render_prometheus(store, used_only).encode(), PROM_CONTENT_TYPE)
        return Reply(200, render_text(store, filt, used_only).encode())
    if path == "/stats/prometheus":
        return Reply(200, render_prometheus(store, used_only).encode(), PROM_CONTENT_TYPE)
    if path == "/ready":
        names = {0: "LIVE", 1: "DRAINING", 2: "PRE_INITIALIZING", 3: "INITIALIZING"}
        state = names.get(server_state, "LIVE")
        return Reply(200 if server_state == 0 else 503, f"{state}\n".encode())
    if path == "/server_info":
        doc = {"version": f"meshlab/{__version__}/Clean/RELEASE/BoringSSL",
               "state": "LIVE" if server_state == 0 else "DRAINING",
               "uptime_current_epoch": f"{int(time.time() - start_s)}s",
               "uptime_all_epochs": f"{int(time.time() - start_s)}s",
               "hot_restart_version": "disabled", "command_line_options": {}, "node": {}}
        return Reply(200, json.dumps(doc, indent=2).encode(), b"application/json")
    if path == "/listeners":
        return Reply(200, "".join(line + "\n" for line in listeners).encode())
    return Reply(404, _usage())


def prometheus_listener_response(method: str, target: str, store: StatsStore) -> Reply:
    """15090: only ``/stats/prometheus`` is routed (to the admin); anything else → 404 NR."""
    if urlsplit(target).path.startswith("/stats/prometheus"):
        return admin_response("GET", target, store)
    return Reply(404, b"")


def agent_response(method: str, target: str, store: StatsStore, *, ready: bool = True,
                   on_quit: Callable[[], None] | None = None) -> Reply:
    """15020 (pilot-agent): merged ``/stats/prometheus`` and ``/metrics``, ``/healthz/ready``."""
    path = urlsplit(target).path
    if path in ("/stats/prometheus", "/metrics"):
        return Reply(200, render_prometheus(store).encode(), PROM_CONTENT_TYPE)
    if path == "/healthz/ready":
        return Reply(200 if ready else 503, b"" if ready else b"not ready\n")
    if path == "/quitquitquit":
        if method != "POST":
            return Reply(405, b"")
        if on_quit is not None:
            on_quit()
        return Reply(200, b"")
    return Reply(404, b"404 page not found\n")


Handler = Callable[[str, str], Reply]


async def serve_http_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             handler: Handler, server_header: bytes | None) -> None:
    """Keep-alive HTTP/1.1 loop answering each request with ``handler(method, target)``."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                method, target = event.method.decode(), event.target.decode("latin-1")
                continue_reading = True
                while continue_reading:  # drain the request body
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                        continue_reading = False
                try:
                    reply = handler(method, target)
                except Exception as exc:  # noqa: BLE001 - admin must stay up
                    reply = Reply(500, f"{exc!r}\n".encode())
                headers = [(b"content-type", reply.content_type),
                           (b"content-length", str(len(reply.body)).encode()),
                           (b"date", http_date())]
                if server_header:
                    headers.append((b"server", server_header))
                out = conn.send(h11.Response(status_code=reply.status, headers=headers))
                if method != "HEAD":
                    out += conn.send(h11.Data(data=reply.body))
                out += conn.send(h11.EndOfMessage())
                writer.write(out)
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                continue
            return  # ConnectionClosed / PAUSED
    except (h11.ProtocolError, ConnectionError, OSError):
        return
    except Exception as exc:  # noqa: BLE001
        print(f"meshlab.proxy: admin error: {exc!r}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start_handler_server(host: str, port: int, handler: Handler,
                               server_header: bytes | None) -> asyncio.base_events.Server:
    """Listen on ``host:port`` and answer with ``handler``."""
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http_handler(reader, writer, handler, server_header)

    return await asyncio.start_server(on_conn, host, port, reuse_address=True)
