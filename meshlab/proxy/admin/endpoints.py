"""Admin (127.0.0.1:15000), Envoy Prometheus (15090) and agent (15020) endpoints (ENVOY.md §4, §5).

Request routing is a pure function (:func:`admin_response` over an :class:`AdminContext`) so
it is unit-testable; page bodies come from :mod:`.stats_render`, :mod:`.admin_clusters`,
:mod:`.admin_config`, :mod:`.admin_logging` and :mod:`.admin_state`. The asyncio part is a tiny
keep-alive HTTP/1.1 server over h11.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import h11

from meshlab import __version__
from meshlab.proxy.admin.clusters import (
    render_clusters_json,
    render_clusters_text,
    render_listeners,
)
from meshlab.proxy.admin.config_dump import config_dump, node
from meshlab.proxy.admin.state import ServerState
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.http.headers import http_date
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.process_metrics import render_process_metrics
from meshlab.proxy.stats.render import STAT_TYPES, render_json, render_prometheus, render_text
from meshlab.proxy.stats.store import StatsStore

PROM_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json"
_POST_ONLY = ("/quitquitquit", "/reset_counters", "/healthcheck/fail", "/healthcheck/ok",
              "/drain_listeners", "/logging")
_GET = ("/stats", "/stats/prometheus", "/ready", "/server_info", "/listeners", "/clusters",
        "/config_dump")


@dataclass(frozen=True)
class Reply:
    """An admin response."""

    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=UTF-8"


@dataclass
class AdminContext:
    """What the admin endpoints read and act on.

    Attributes:
        stats: the sidecar's stat trees (``.store`` is the stats store).
        config: the sidecar config (``/config_dump``, ``/clusters``, ``/listeners``).
        server: health / drain / logging state.
        on_quit: called on ``POST /quitquitquit``.
        on_drain: ``(inbound_only, graceful)`` called on ``POST /drain_listeners``.
        is_ejected: ``(cluster, (ip, port)) -> bool`` from outlier detection (``/clusters``).
        on_reset: does ``POST /reset_counters`` instead of zeroing :attr:`stats` (the worker
            model resets every worker too).
        pids: the sidecar's processes for the 15020 ``process_*`` metrics (None: this one).
    """

    stats: ProxyStats
    config: SidecarConfig
    server: ServerState
    on_quit: Callable[[], None] | None = None
    on_drain: Callable[[bool, bool], None] | None = None
    is_ejected: Callable[[str, tuple[str, int]], bool] | None = None
    on_reset: Callable[[], None] | None = None
    pids: Callable[[], list[int]] | None = None

    @property
    def store(self) -> StatsStore:
        """The stats store."""
        return self.stats.store


def _usage() -> bytes:
    cmds = "".join(f"  {p}\n" for p in sorted(_GET + _POST_ONLY))
    return f"invalid path. admin commands are:\n{cmds}".encode()


def _mutate(path: str, query: dict[str, list[str]], ctx: AdminContext) -> Reply:
    if path == "/quitquitquit":
        if ctx.on_quit is not None:
            ctx.on_quit()
        return Reply(200, b"OK\n")
    if path == "/reset_counters":
        if ctx.on_reset is not None:
            ctx.on_reset()
        else:
            ctx.stats.reset_counters()
        return Reply(200, b"OK\n")
    if path in ("/healthcheck/fail", "/healthcheck/ok"):
        ctx.server.fail_healthcheck(path.endswith("fail"))
        return Reply(200, b"OK\n")
    if path == "/drain_listeners":
        if ctx.on_drain is not None:
            ctx.on_drain("inboundonly" in query, "graceful" in query)
        return Reply(200, b"OK\n")
    status, body = ctx.server.logging.handle(query)  # /logging
    return Reply(status, body.encode())


def _stats(path: str, query: dict[str, list[str]], ctx: AdminContext) -> Reply:
    filt = query.get("filter", [None])[0]
    used_only = "usedonly" in query
    fmt = "prometheus" if path == "/stats/prometheus" else query.get("format", ["text"])[0]
    stat_type = query.get("type", ["All"])[0]
    if stat_type not in STAT_TYPES:  # Envoy StatsParams::parse
        return Reply(400, b"invalid &type= param")
    if filt:
        try:
            re.compile(filt)
        except re.error as exc:
            return Reply(400, f"Invalid re2 regex: {exc}\n".encode())
    store = ctx.store
    if fmt == "json":
        return Reply(200, render_json(store, filt, used_only, stat_type).encode(),
                     JSON_CONTENT_TYPE)
    if fmt == "prometheus":
        return Reply(200, render_prometheus(store, used_only, filt).encode(), PROM_CONTENT_TYPE)
    if fmt != "text":
        return Reply(404, f"usage: /stats?format=(json|prometheus|text), got {fmt}\n".encode())
    return Reply(200, render_text(store, filt, used_only, stat_type).encode())


def _server_info(ctx: AdminContext) -> Reply:
    srv = ctx.server
    up = f"{srv.uptime_s}s"
    doc = {"version": f"meshlab/{__version__}/Clean/RELEASE/BoringSSL", "state": srv.state_name,
           "hot_restart_version": "disabled",
           "command_line_options": {
               "concurrency": srv.concurrency, "log_level": srv.logging.level("main"),
               "component_log_level": "misc:error", "drain_time": f"{int(srv.drain_time_s)}s",
               "drain_strategy": "Immediate", "parent_shutdown_time": "60s", "mode": "Serve",
               "local_address_ip_version": "v4", "service_cluster": node(ctx.config)["cluster"],
               "service_node": node(ctx.config)["id"]},
           "node": node(ctx.config), "uptime_current_epoch": up, "uptime_all_epochs": up}
    return Reply(200, json.dumps(doc, indent=2).encode(), JSON_CONTENT_TYPE)


def admin_response(method: str, target: str, ctx: AdminContext) -> Reply:
    """Answer one request to the Envoy admin port (ENVOY.md §5).

    Mutating endpoints need POST: any other method gets 400 and changes nothing.

    Args:
        method: HTTP method.
        target: request target (path and query).
        ctx: what the endpoints read and act on.
    """
    try:
        url = urlsplit(target)
    except ValueError:  # e.g. an unbalanced "[" (found by fuzz/fuzz_admin_query.py)
        return Reply(400, b"invalid path\n")
    path, query = url.path, parse_qs(url.query, keep_blank_values=True)
    if path in _POST_ONLY:
        if method != "POST":
            return Reply(400, f"Method {method} not allowed, POST required.\n".encode())
        return _mutate(path, query, ctx)
    if method not in ("GET", "HEAD", "POST"):
        return Reply(405, b"")
    if path in ("/stats", "/stats/prometheus"):
        return _stats(path, query, ctx)
    if path == "/ready":
        srv = ctx.server
        return Reply(200 if srv.state == 0 else 503, f"{srv.state_name}\n".encode())
    if path == "/server_info":
        return _server_info(ctx)
    fmt = query.get("format", ["text"])[0]
    if path == "/listeners":
        body = render_listeners(ctx.config, fmt)
        return Reply(200, body.encode(), JSON_CONTENT_TYPE if fmt == "json" else Reply.content_type)
    if path == "/clusters":
        if fmt == "json":
            return Reply(200, render_clusters_json(ctx.config, ctx.stats, ctx.is_ejected).encode(),
                         JSON_CONTENT_TYPE)
        return Reply(200, render_clusters_text(ctx.config, ctx.stats, ctx.is_ejected).encode())
    if path == "/config_dump":
        try:
            status, body = config_dump(ctx.config, ctx.store.matcher,
                                       resource=query.get("resource", [None])[0] or None,
                                       name_regex=query.get("name_regex", [None])[0] or None,
                                       include_eds="include_eds" in query)
        except re.error as exc:
            return Reply(400, f"Error while parsing name_regex: {exc}\n".encode())
        return Reply(status, body.encode(), JSON_CONTENT_TYPE)
    return Reply(404, _usage())


def prometheus_listener_response(method: str, target: str, store: StatsStore) -> Reply:
    """15090: only ``/stats/prometheus`` is routed (to the admin); anything else → 404 NR."""
    url = urlsplit(target)
    if url.path.startswith("/stats/prometheus"):
        query = parse_qs(url.query, keep_blank_values=True)
        return Reply(200, render_prometheus(store, "usedonly" in query,
                                            query.get("filter", [None])[0]).encode(),
                     PROM_CONTENT_TYPE)
    return Reply(404, b"")


def agent_response(method: str, target: str, store: StatsStore, *, ready: bool = True,
                   on_quit: Callable[[], None] | None = None,
                   pids: Callable[[], list[int]] | None = None) -> Reply:
    """15020 (pilot-agent): merged ``/stats/prometheus`` and ``/metrics``, ``/healthz/ready``.

    The merged output is the agent's own metrics (the sidecar process's ``process_*``,
    :mod:`.process_metrics`), then Envoy's 15090 output with the query string passed through,
    then the app's (not scraped here; ENVOY.md §4). ``pids`` lists the sidecar's processes
    (main and workers) whose CPU and memory the ``process_*`` metrics add up.
    """
    path = urlsplit(target).path
    if path in ("/stats/prometheus", "/metrics"):
        envoy = prometheus_listener_response("GET", "/stats/prometheus" + (
            "?" + urlsplit(target).query if urlsplit(target).query else ""), store)
        procs = render_process_metrics(pids=pids() if pids is not None else None)
        return Reply(envoy.status, procs.encode() + envoy.body,
                     envoy.content_type)
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
#: A handler that may need to wait (the worker model merges stats before answering).
AnyHandler = Callable[[str, str], "Reply | Awaitable[Reply]"]


async def serve_http_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             handler: AnyHandler, server_header: bytes | None) -> None:
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
                    got = handler(method, target)
                    reply = await got if inspect.isawaitable(got) else got
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


async def start_handler_server(host: str, port: int, handler: AnyHandler,
                               server_header: bytes | None) -> asyncio.base_events.Server:
    """Listen on ``host:port`` and answer with ``handler``."""
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http_handler(reader, writer, handler, server_header)

    return await asyncio.start_server(on_conn, host, port, reuse_address=True)
