"""Starts the admin (15000), Prometheus (15090) and agent (15020) servers of one sidecar and
runs the periodic stats work (ENVOY.md §3, §4, §5).

:func:`start_admin` wires :class:`~meshlab.proxy.admin.endpoints.AdminContext` to the running
:class:`~meshlab.proxy.listeners.Sidecar`: ``/drain_listeners`` really closes the capture listeners
(and 15090 unless ``inboundonly``), at once or after the graceful drain time.
:meth:`AdminRuntime.flush` is the ``stats_flush_interval`` tick: histogram intervals,
``server.*`` gauges, and every ``tcp_reporting_duration`` (5 s) the Istio TCP byte reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

from meshlab.proxy.admin.clusters import cluster_inventory, listener_inventory
from meshlab.proxy.admin.endpoints import (
    AdminContext,
    Handler,
    Reply,
    admin_response,
    agent_response,
    prometheus_listener_response,
    start_handler_server,
)
from meshlab.proxy.admin.state import ServerState
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.stats.metrics import ProxyStats

#: Istio ``tcp_reporting_duration`` default (istio_stats filter).
TCP_REPORTING_DURATION_S = 5.0


def init_cluster_stats(config: SidecarConfig, stats: ProxyStats) -> int:
    """Create every cluster's stat tree with its membership gauges (Envoy does it at CDS time).

    Returns:
        The number of clusters.
    """
    infos = cluster_inventory(config)
    for info in infos:
        cs = stats.cluster(info.name)
        cs.set_membership(len(info.hosts))
        cs.version.set(0)
    return len(infos)


class DataPlane(Protocol):
    """What the admin acts on: the in-process :class:`~meshlab.proxy.listeners.Sidecar`, or
    the main process's :class:`~meshlab.proxy.workers.supervisor.WorkerGroup`."""

    def stop_listeners(self, inbound_only: bool = False) -> int:
        """Close the capture listeners; how many listeners stopped."""
        ...

    def is_ejected(self, cluster: str, host: tuple[str, int]) -> bool:
        """Whether outlier detection has ejected ``host`` of ``cluster``."""
        ...


class WorkerHooks(Protocol):
    """Admin hooks of the worker model: merge worker stats before a read, and wait for the
    workers to carry out what a request changed before replying."""

    async def before_read(self, path: str) -> None:
        """Bring the merged stats up to date if ``path`` reads them."""
        ...

    async def settle(self) -> None:
        """Wait until every control request queued by the admin so far is done."""
        ...


class AdminRuntime:
    """The running admin side of one sidecar.

    Args:
        ctx: admin context (its ``on_drain`` is set here).
        sidecar: the data path whose listeners ``/drain_listeners`` stops.
        hooks: the worker model's hooks, None in a single process.
    """

    def __init__(self, ctx: AdminContext, sidecar: DataPlane,
                 hooks: WorkerHooks | None = None) -> None:
        self.ctx = ctx
        self.sidecar = sidecar
        self.hooks = hooks
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self._last_tcp_report = time.monotonic()
        self._drain_timer: asyncio.TimerHandle | None = None
        ctx.on_drain = self.drain

    async def start(self, on_quit: Callable[[], None]) -> None:
        """Bind 127.0.0.1:admin, 0.0.0.0:prometheus and 0.0.0.0:agent."""
        ctx, ports, store, wrap = self.ctx, self.ctx.config.ports, self.ctx.store, self._wrap
        self.servers["admin"] = await start_handler_server(
            "127.0.0.1", ports.admin, wrap(lambda m, t: admin_response(m, t, ctx)), None)
        self.servers["prometheus"] = await start_handler_server(
            "0.0.0.0", ports.prometheus,
            wrap(lambda m, t: prometheus_listener_response(m, t, store)), b"envoy")
        self.servers["agent"] = await start_handler_server(
            "0.0.0.0", ports.agent,
            wrap(lambda m, t: agent_response(m, t, store, ready=ctx.server.state == 0,
                                             on_quit=on_quit, pids=ctx.pids)), None)

    def _wrap(self, handler: Handler) -> Callable[[str, str], Reply | Awaitable[Reply]]:
        hooks = self.hooks
        if hooks is None:
            return handler

        async def merged(method: str, target: str) -> Reply:
            await hooks.before_read(urlsplit(target).path)
            reply = handler(method, target)
            await hooks.settle()
            return reply

        return merged

    def drain(self, inbound_only: bool, graceful: bool) -> None:
        """``POST /drain_listeners``: stop listeners now, or after the drain time if graceful."""
        server = self.ctx.server
        if not graceful:
            self._stop_listeners(inbound_only)
            return
        if server.draining:  # Envoy ignores a second graceful drain
            return
        server.draining = True
        server.refresh()
        loop = asyncio.get_running_loop()
        self._drain_timer = loop.call_later(server.drain_time_s, self._stop_listeners, inbound_only)

    def _stop_listeners(self, inbound_only: bool) -> None:
        count = self.sidecar.stop_listeners(inbound_only)
        if not inbound_only and "prometheus" in self.servers:
            self.servers.pop("prometheus").close()  # 0.0.0.0_15090 is an Envoy listener too
            count += 1
        self.ctx.server.listeners_stopped("INBOUND" if inbound_only else "ALL", count)

    def flush(self, histograms: bool = True) -> None:
        """One ``stats_flush_interval`` tick (``histograms=False``: the worker model's main,
        whose merge already closed the histogram interval and whose workers report TCP)."""
        stats = self.ctx.stats
        if histograms:
            stats.store.flush()
        self.ctx.server.refresh()
        now = time.monotonic()
        if histograms and now - self._last_tcp_report >= TCP_REPORTING_DURATION_S:
            self._last_tcp_report = now
            stats.istio.report_tcp()

    def close(self) -> None:
        """Stop every admin-side server and the drain timer."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        for srv in self.servers.values():
            with contextlib.suppress(Exception):
                srv.close()

    def __repr__(self) -> str:
        return f"AdminRuntime(servers={sorted(self.servers)}, {self.ctx.server!r})"


async def start_admin(config: SidecarConfig, stats: ProxyStats, sidecar: DataPlane,
                      on_quit: Callable[[], None], *, hooks: WorkerHooks | None = None,
                      concurrency: int = 1,
                      pids: Callable[[], list[int]] | None = None) -> AdminRuntime:
    """Create the server state and cluster stats, then start the admin-side servers.

    Args:
        config: the sidecar config.
        stats: the stats the admin reads (the merged ones in the worker model).
        sidecar: what ``/drain_listeners`` stops and ``/clusters`` asks about ejections.
        on_quit: called on ``/quitquitquit``.
        hooks: the worker model's hooks (None: one process).
        concurrency: worker count (``server.concurrency``, ``/server_info``).
        pids: the sidecar's processes (memory and ``process_*`` metrics), None: this one.

    Raises:
        OSError: a port cannot be bound.
    """
    clusters = init_cluster_stats(config, stats)
    listeners = sum(1 for li in listener_inventory(config) if li.bind)

    def connections() -> int:
        return sum(ls.downstream_cx_active.value for ls in stats.listeners())

    state = ServerState(stats.store, clusters=clusters, listeners=listeners,
                        connections=connections, concurrency=concurrency, pids=pids)
    runtime = AdminRuntime(AdminContext(stats, config, state, on_quit=on_quit,
                                        is_ejected=sidecar.is_ejected, pids=pids),
                           sidecar, hooks)
    await runtime.start(on_quit)
    return runtime
