"""One worker process of a sidecar with ``concurrency`` >= 2 (Envoy's worker thread).

A worker serves its share of the capture listeners (its own ``SO_REUSEPORT`` sockets, bound by
the main before the fork), keeps its own connection pools, stats store and access-log file
descriptor (``O_APPEND``, whole lines per ``write(2)``, so lines of different workers never
interleave), and shares circuit-breaker and outlier state through the cells. It answers the
main's control requests (:data:`OPS`) and stops on SIGTERM/SIGINT or when the main's end of
the control channel closes.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from typing import Any

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.admin.server import TCP_REPORTING_DURATION_S
from meshlab.proxy.cells import Cells
from meshlab.proxy.config.sidecar import SidecarConfig, load_config
from meshlab.proxy.listeners import Listener, Sidecar
from meshlab.proxy.process import drop_privileges, loop_factory, quiet_gc
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.workers.channel import ControlProtocol
from meshlab.proxy.workers.snapshot import WorkerReport

#: Control requests a worker answers: ``stats`` → (stat deltas, host deltas); ``flush`` →
#: closed histogram intervals; ``reset_counters`` → None; ``drain`` (inbound_only) → listeners
#: stopped.
OPS = ("stats", "flush", "reset_counters", "drain", "reload")


class Worker:
    """The serving side of one worker process.

    Args:
        config: the sidecar config.
        cells: the sidecar's shared cells.
    """

    def __init__(self, config: SidecarConfig, cells: Cells) -> None:
        store = StatsStore(StatsMatcher(config.stats_inclusion_regexps),
                           delimited_tags=config.stats_delimited_tags)
        self.stats = ProxyStats(store, delimited=config.stats_delimited_tags)
        self.access_log = AccessLogWriter(config.access_log_path, config.access_log_encoding)
        self.sidecar = Sidecar(config, self.stats, self.access_log, cells)
        self.report = WorkerReport(self.stats)
        self._last_tcp_report = time.monotonic()

    def handle(self, op: str, arg: Any) -> object:
        """Answer one control request (see :data:`OPS`).

        Raises:
            ValueError: an unknown op.
        """
        if op == "stats":
            return self.report.deltas()
        if op == "flush":
            now = time.monotonic()
            if now - self._last_tcp_report >= TCP_REPORTING_DURATION_S:
                self._last_tcp_report = now
                self.stats.istio.report_tcp()
            return self.report.intervals()
        if op == "reset_counters":
            self.report.reset_counters()
            return None
        if op == "drain":
            return self.sidecar.stop_listeners(bool(arg))
        if op == "reload":  # istiod's push, read by each worker (ConfigError → an error reply)
            self.sidecar.reload(load_config(arg))
            return None
        raise ValueError(f"unknown control op {op!r}")

    async def run(self, listeners: list[Listener], control: socket.socket) -> None:
        """Serve until SIGTERM/SIGINT or until the main's end of ``control`` closes."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.sidecar.serve(listeners)
        transport, _ = await loop.connect_accepted_socket(
            lambda: ControlProtocol(self.handle, stop.set), control)
        quiet_gc()
        try:
            await stop.wait()
        finally:
            transport.close()
            await self.sidecar.close()
            self.access_log.close()

    def __repr__(self) -> str:
        return f"Worker({self.sidecar!r})"


def worker_main(config: SidecarConfig, cells: Cells, listeners: list[Listener],
                control: socket.socket, drop_to: tuple[int, int] | None) -> int:
    """Body of a forked worker; returns its exit status (0 after a clean stop)."""
    try:
        worker = Worker(config, cells)  # opens the access log as the single process does:
        if drop_to is not None:  # before dropping privileges
            drop_privileges(*drop_to)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(worker.run(listeners, control))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 - reported; the main exits non-zero
        print(f"meshlab.proxy: worker failed: {exc!r}", file=sys.stderr)
        return 1
    return 0
