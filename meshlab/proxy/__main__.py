"""``python -m meshlab.proxy --config sidecar.json``: run the embedded sidecar until SIGTERM.

Starts the capture listeners (15001 outbound, 15006 inbound), the admin on 127.0.0.1:15000,
Envoy's Prometheus listener on 0.0.0.0:15090 and the agent endpoint on 0.0.0.0:15020. With
``concurrency`` (sidecar.json, or ``--concurrency``) of 2 or more, a main process owns the
admin side and forks that many workers that share the capture listeners
(:mod:`meshlab.proxy.workers`); with 1, one process does everything. Prints nothing on success;
errors go to stderr. Exit status 2 for an invalid config or argument, 1 when a port cannot be
bound, 3 when a worker died.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from meshlab.errors import ConfigError
from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.admin.server import start_admin
from meshlab.proxy.config.sidecar import SidecarConfig, load_config
from meshlab.proxy.config.watch import watch
from meshlab.proxy.dns import start_if_enabled
from meshlab.proxy.listeners import Sidecar
from meshlab.proxy.process import GC_THRESHOLDS, drop_privileges, loop_factory, quiet_gc
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.workers.supervisor import serve

__all__ = ["GC_THRESHOLDS", "drop_privileges", "loop_factory", "main", "quiet_gc", "run"]


async def run(config: SidecarConfig, *, stop: asyncio.Event | None = None,
              drop_to: tuple[int, int] | None = None, config_path: str | None = None) -> None:
    """Run the sidecar until ``stop`` is set (or SIGTERM/SIGINT, or ``/quitquitquit``).

    Args:
        config: the sidecar config.
        stop: set it to stop the sidecar.
        drop_to: ``(uid, gid)`` to switch to once every listener is bound.
        config_path: the file ``config`` came from; watched for pushes
            (:mod:`meshlab.proxy.config.watch`). None: no pushes.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    store = StatsStore(StatsMatcher(config.stats_inclusion_regexps),
                       delimited_tags=config.stats_delimited_tags)
    stats = ProxyStats(store, delimited=config.stats_delimited_tags)
    access_log = AccessLogWriter(config.access_log_path, config.access_log_encoding)
    sidecar = Sidecar(config, stats, access_log)
    admin = await start_admin(config, stats, sidecar, stop.set)
    await sidecar.start()
    dns_proxy = await start_if_enabled(config)  # ISTIO_META_DNS_CAPTURE (docs/SIDECAR.md)
    if drop_to is not None:
        drop_privileges(*drop_to)
    quiet_gc()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(config.stats_flush_interval_s)
            admin.flush()

    async def pushed(new: SidecarConfig) -> None:
        sidecar.reload(new)
        admin.ctx.config = new
        if dns_proxy is not None:
            dns_proxy.reload(new)

    flush_task = asyncio.ensure_future(flusher())
    watch_task = asyncio.ensure_future(watch(config_path, pushed)) if config_path else None
    try:
        await stop.wait()
    finally:
        flush_task.cancel()
        if watch_task is not None:
            watch_task.cancel()
        admin.close()
        if dns_proxy is not None:
            dns_proxy.close()
        await sidecar.close()
        access_log.close()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.proxy",
                                     description="meshlab's embedded istio-proxy-like sidecar")
    parser.add_argument("--config", required=True, help="path of sidecar.json (CONTRACTS.md §1)")
    parser.add_argument("--uid", type=int, default=None,
                        help="switch to this uid once bound (the lab passes 1337)")
    parser.add_argument("--gid", type=int, default=None, help="switch to this gid once bound")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker processes (Envoy --concurrency); overrides sidecar.json")
    args = parser.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency: expected an integer >= 1, got {args.concurrency}")
    drop_to = None
    if args.uid is not None:
        drop_to = (args.uid, args.gid if args.gid is not None else args.uid)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"meshlab.proxy: invalid config: {exc}", file=sys.stderr)
        return 2
    concurrency = args.concurrency if args.concurrency is not None else config.concurrency
    try:
        if concurrency >= 2:
            return serve(config, concurrency, drop_to, config_path=args.config)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run(config, drop_to=drop_to, config_path=args.config))
    except OSError as exc:
        print(f"meshlab.proxy: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
