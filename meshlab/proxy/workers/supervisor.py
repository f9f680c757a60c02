"""The main process of a sidecar with ``concurrency`` >= 2 (Envoy's main thread).

:func:`serve` binds every capture listener once per worker (``SO_REUSEPORT``), maps the shared
cells, forks the workers and then runs the main's event loop: the admin (15000), Prometheus
(15090) and agent (15020) listeners, the stats flush, and the merge of worker stats
(:mod:`.snapshot`) before every stats read. ``/drain_listeners`` and ``/reset_counters`` reach
every worker before the admin replies.

A worker that exits while the sidecar is not stopping ends the sidecar with
:data:`WORKER_DIED_STATUS` after the other workers are stopped, as Envoy dies with a crashed
worker thread and the kubelet restarts the container. SIGTERM/SIGINT or ``/quitquitquit`` stop
the workers (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`) and exit 0. If the main itself
is killed, each worker sees its control channel close and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import sys
import time

from meshlab.proxy.admin.clusters import cluster_inventory
from meshlab.proxy.admin.server import start_admin
from meshlab.proxy.cells import (
    Cells,
    circuit_block_name,
    circuit_block_size,
    outlier_block_name,
    outlier_block_size,
)
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.config.watch import watch
from meshlab.proxy.dns import start_if_enabled
from meshlab.proxy.listeners import Listener, bind_listeners
from meshlab.proxy.process import drop_privileges, loop_factory
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.circuit import CircuitRegistry
from meshlab.proxy.upstream.outlier import OutlierRegistry
from meshlab.proxy.workers.channel import ChannelError, WorkerLink
from meshlab.proxy.workers.snapshot import apply_deltas, merge_intervals
from meshlab.proxy.workers.worker import worker_main

#: Exit status of a sidecar whose worker died.
WORKER_DIED_STATUS = 3
#: Time the workers get to stop after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
#: Admin paths whose answer reads merged stats.
_STATS_PATHS = ("/stats", "/clusters", "/metrics")


def sidecar_layout(config: SidecarConfig, workers: int) -> dict[str, int]:
    """The shared blocks of one sidecar with ``workers`` workers: circuit counts for every
    cluster Istio would push and outlier state for each cluster with outlier detection and
    configured endpoints."""
    layout: dict[str, int] = {}
    for info in cluster_inventory(config):
        layout[circuit_block_name(info.name)] = circuit_block_size(workers)
        hosts = {h for h in info.hosts if isinstance(h, tuple)}
        if info.policy.outlier_detection is not None and hosts:
            layout[outlier_block_name(info.name)] = outlier_block_size(len(hosts))
    return layout


class WorkerGroup:
    """The main's handle on its workers: what the admin acts on and reads through.

    Args:
        config: the sidecar config.
        links: one control channel per worker.
        pids: the workers' pids, in the same order.
        stats: the main's stats (the merged view the admin renders).
        cells: the shared cells (circuit gauges and ``/clusters`` ejections are read there).
    """

    def __init__(self, config: SidecarConfig, links: list[WorkerLink], pids: list[int],
                 stats: ProxyStats, cells: Cells) -> None:
        self.config = config
        self.links = links
        self.pids = pids
        self.stats = stats
        self._lock = asyncio.Lock()
        self._queued: set[asyncio.Task[object]] = set()
        self.circuits = CircuitRegistry(cells)
        self.outliers = OutlierRegistry(cells=cells)
        self.outliers.bind(stats, cells)
        for info in cluster_inventory(config):
            if info.added_via_api:
                self.circuits.get(info, stats)  # type: ignore[arg-type]
            hosts = tuple(h for h in info.hosts if isinstance(h, tuple))
            if info.policy.outlier_detection is not None and hosts:
                self.outliers.register(info.name, info.policy.outlier_detection, hosts)

    def all_pids(self) -> list[int]:
        """The main's pid, then the workers'."""
        return [os.getpid(), *self.pids]

    # -- reads ----------------------------------------------------------------------------------

    async def sync_stats(self) -> None:
        """Add every worker's counter/gauge deltas and re-read the shared circuit counts.

        Raises:
            ChannelError: a worker is gone.
        """
        async with self._lock:
            for link in self.links:
                stat_deltas, host_deltas = await link.call("stats")
                apply_deltas(self.stats, stat_deltas, host_deltas)
            self.circuits.refresh()

    async def flush(self) -> None:
        """The ``stats_flush_interval`` tick: merge deltas and every worker's closed histogram
        interval, then close the main's interval."""
        await self.sync_stats()
        async with self._lock:
            for link in self.links:
                merge_intervals(self.stats, await link.call("flush"))
            self.stats.store.flush()

    async def before_read(self, path: str) -> None:
        """Admin hook: merge before answering a stats read."""
        if path.startswith(_STATS_PATHS):
            await self.sync_stats()

    # -- changes --------------------------------------------------------------------------------

    def _queue(self, work: asyncio.Future[object] | asyncio.Task[object]) -> None:
        task = asyncio.ensure_future(work)
        self._queued.add(task)
        task.add_done_callback(self._queued.discard)

    async def _broadcast(self, op: str, arg: object = None) -> list[object]:
        async with self._lock:
            return [await link.call(op, arg) for link in self.links]

    async def reload(self, path: str | None) -> None:
        """Every worker loads the pushed config at ``path`` (returns when all have)."""
        await self._broadcast("reload", path)

    async def settle(self) -> None:
        """Admin hook: wait for the queued broadcasts (drain, reset) to reach every worker."""
        if self._queued:
            await asyncio.gather(*list(self._queued), return_exceptions=True)

    def stop_listeners(self, inbound_only: bool = False) -> int:
        """``/drain_listeners``: every worker closes its capture sockets. Returns the number of
        listeners (not sockets) stopped, as one Envoy counts them."""
        self._queue(self._broadcast("drain", inbound_only))  # type: ignore[arg-type]
        return 1 if inbound_only else 2

    def reset_counters(self) -> None:
        """``/reset_counters``: zero the merged counters and every worker's."""
        async def reset() -> object:
            async with self._lock:
                self.stats.reset_counters()
                for link in self.links:
                    await link.call("reset_counters")
            return None

        self._queue(reset())  # type: ignore[arg-type]

    def is_ejected(self, cluster: str, host: tuple[str, int]) -> bool:
        """``/clusters``: read from the shared outlier state."""
        return self.outliers.is_ejected(cluster, host)

    def __repr__(self) -> str:
        return f"WorkerGroup(pids={self.pids})"


def _fork_worker(index: int, config: SidecarConfig, cells: Cells, shares: list[list[Listener]],
                 links: list[WorkerLink], drop_to: tuple[int, int] | None
                 ) -> tuple[int, socket.socket]:
    """Fork worker ``index``; in the parent return ``(pid, main's end of its channel)``."""
    main_end, worker_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the worker: keep only its own listeners and channel end
        status = 1
        try:
            cells.slot = index  # this worker's cell of every count
            main_end.close()
            for link in links:
                link.sock.close()
            for j, share in enumerate(shares):
                if j != index:
                    for _, _, sock in share:
                        sock.close()
            status = worker_main(config, cells, shares[index], worker_end, drop_to)
        finally:
            os._exit(status)
    worker_end.close()
    for _, _, sock in shares[index]:
        sock.close()
    return pid, main_end


def serve(config: SidecarConfig, concurrency: int, drop_to: tuple[int, int] | None,
          config_path: str | None = None) -> int:
    """Run the sidecar as a main process and ``concurrency`` workers until stopped.
    ``config_path`` (the file ``config`` came from) is watched for pushes: the main tells
    every worker to load the new version before it serves it on the admin side itself.

    Returns:
        The exit status: 0 after SIGTERM/SIGINT/``/quitquitquit``,
        :data:`WORKER_DIED_STATUS` when a worker died.

    Raises:
        OSError: a listener or admin port cannot be bound (no worker is left running).
    """
    shares: list[list[Listener]] = []
    try:
        for _ in range(concurrency):
            shares.append(bind_listeners(config, reuse_port=True))
    except BaseException:
        for share in shares:
            for _, _, sock in share:
                sock.close()
        raise
    cells = Cells(sidecar_layout(config, concurrency), shared=True, workers=concurrency)
    supervisor = _Main(config, [], [], cells, config_path)
    try:
        for i in range(concurrency):
            pid, main_end = _fork_worker(i, config, cells, shares, supervisor.links, drop_to)
            supervisor.pids.append(pid)
            supervisor.alive.add(pid)
            supervisor.links.append(WorkerLink(i, main_end))
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(supervisor.run(drop_to))
    finally:
        supervisor.stop_workers()


class _Main:
    """The main process's event-loop side."""

    def __init__(self, config: SidecarConfig, links: list[WorkerLink], pids: list[int],
                 cells: Cells, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.links = links
        self.pids = pids
        self.cells = cells
        self.status = 0
        self.stopping = False
        self.alive = set(pids)

    def _reap(self, index: int, stop: asyncio.Event) -> None:
        pid = self.pids[index]
        with contextlib.suppress(ChildProcessError):
            reaped, raw = os.waitpid(pid, os.WNOHANG)
            if reaped == 0:
                return
            self.alive.discard(pid)
            if self.stopping:
                return
            code = os.waitstatus_to_exitcode(raw)
            if code != 0:  # 0: it was stopped (a SIGINT to the process group reaches it too)
                how = f"signal {-code}" if code < 0 else f"status {code}"
                print(f"meshlab.proxy: worker {index} (pid {pid}) exited with {how}; "
                      f"stopping the sidecar", file=sys.stderr)
                self.status = WORKER_DIED_STATUS
            stop.set()  # without all its workers the sidecar stops, as Envoy does

    async def run(self, drop_to: tuple[int, int] | None) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        fds = []
        for i, pid in enumerate(self.pids):
            fd = os.pidfd_open(pid)
            fds.append(fd)
            loop.add_reader(fd, self._reap, i, stop)
            self._reap(i, stop)  # it may have died before we watched
        cfg = self.config
        store = StatsStore(StatsMatcher(cfg.stats_inclusion_regexps),
                           delimited_tags=cfg.stats_delimited_tags)
        stats = ProxyStats(store, delimited=cfg.stats_delimited_tags)
        group = WorkerGroup(cfg, self.links, self.pids, stats, self.cells)
        admin = await start_admin(cfg, stats, group, stop.set, hooks=group,
                                  concurrency=len(self.pids), pids=group.all_pids)
        admin.ctx.on_reset = group.reset_counters
        dns_proxy = await start_if_enabled(cfg)  # on the main's loop, never in the workers
        if drop_to is not None:
            drop_privileges(*drop_to)

        async def flusher() -> None:
            while True:
                await asyncio.sleep(cfg.stats_flush_interval_s)
                with contextlib.suppress(ChannelError):
                    await group.flush()
                admin.flush(histograms=False)

        async def pushed(new: SidecarConfig) -> None:
            with contextlib.suppress(ChannelError):
                await group.reload(self.config_path)
            admin.ctx.config = new
            if dns_proxy is not None:
                dns_proxy.reload(new)

        flush_task = asyncio.ensure_future(flusher())
        watch_task = (asyncio.ensure_future(watch(self.config_path, pushed))
                      if self.config_path else None)
        try:
            await stop.wait()
        finally:
            self.stopping = True
            flush_task.cancel()
            if watch_task is not None:
                watch_task.cancel()
            admin.close()
            if dns_proxy is not None:
                dns_proxy.close()
            for fd in fds:
                loop.remove_reader(fd)
                os.close(fd)
        return self.status

    def stop_workers(self) -> None:
        """SIGTERM every live worker, SIGKILL what is left after :data:`STOP_GRACE_S`, reap."""
        self.stopping = True
        for link in self.links:
            with contextlib.suppress(OSError):
                link.sock.close()
        pidfds: dict[int, int] = {}
        for pid in list(self.alive):
            try:
                pidfds[os.pidfd_open(pid)] = pid
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, OSError):
                self.alive.discard(pid)
        deadline = time.monotonic() + STOP_GRACE_S
        killed = False
        while pidfds:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not killed:
                for pid in pidfds.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + STOP_GRACE_S
                continue
            ready, _, _ = select.select(list(pidfds), [], [], max(0.0, remaining))
            if not ready and killed:
                break  # unkillable (D state): leave it to the kubelet
            for fd in ready:
                pid = pidfds.pop(fd)
                os.close(fd)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self.alive.discard(pid)
        for fd in pidfds:
            os.close(fd)

    def __repr__(self) -> str:
        return f"_Main(pids={self.pids}, status={self.status})"
