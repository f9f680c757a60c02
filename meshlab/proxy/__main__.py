"""``python -m meshlab.proxy --config sidecar.json``: run the embedded sidecar until SIGTERM.

Starts the capture listeners (15001 outbound, 15006 inbound), the admin on 127.0.0.1:15000,
Envoy's Prometheus listener on 0.0.0.0:15090 and the agent endpoint on 0.0.0.0:15020. Prints
nothing on success; errors go to stderr. Exit status 2 for an invalid config, 1 when a port
cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable

from meshlab.errors import ConfigError
from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.admin.server import start_admin
from meshlab.proxy.config.sidecar import SidecarConfig, load_config
from meshlab.proxy.listeners import Sidecar
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid:gid`` (Istio's proxy user 1337) after the listeners are bound.

    The local lab starts the sidecar as root so it can run from any checkout (a venv under
    ``/root`` is not readable by uid 1337) and then drops here, before any traffic flows: from
    then on every socket the sidecar opens is owned by 1337 and exempt from the capture rules,
    as istio-proxy's are. Every module it needs is imported by then.
    """
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


async def run(config: SidecarConfig, *, stop: asyncio.Event | None = None,
              drop_to: tuple[int, int] | None = None) -> None:
    """Run the sidecar until ``stop`` is set (or SIGTERM/SIGINT, or ``/quitquitquit``).

    Args:
        config: the sidecar config.
        stop: set it to stop the sidecar.
        drop_to: ``(uid, gid)`` to switch to once every listener is bound.
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
    if drop_to is not None:
        drop_privileges(*drop_to)
    quiet_gc()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(config.stats_flush_interval_s)
            admin.flush()

    flush_task = asyncio.ensure_future(flusher())
    try:
        await stop.wait()
    finally:
        flush_task.cancel()
        admin.close()
        await sidecar.close()
        access_log.close()


#: Generation-0 threshold: a request allocates a few hundred short-lived objects, so CPython's
#: default 700 runs a young collection every few requests; most die young anyway.
GC_THRESHOLDS = (20_000, 20, 100)


def quiet_gc() -> None:
    """After start-up: move every object alive now (config, routes, stats) to the permanent
    generation (``gc.freeze``) so no collection walks them again, and collect the young
    generation less often (:data:`GC_THRESHOLDS`). Request garbage is mostly acyclic and freed
    by reference counting; the collector only has to find the rare cycle."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop``'s event loop when installed (libuv: a cheaper loop and transports), else None
    (asyncio's default). The sidecar relies only on the asyncio API, so either works."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.proxy",
                                     description="meshlab's embedded istio-proxy-like sidecar")
    parser.add_argument("--config", required=True, help="path of sidecar.json (CONTRACTS.md §1)")
    parser.add_argument("--uid", type=int, default=None,
                        help="switch to this uid once bound (the lab passes 1337)")
    parser.add_argument("--gid", type=int, default=None, help="switch to this gid once bound")
    args = parser.parse_args(argv)
    drop_to = None
    if args.uid is not None:
        drop_to = (args.uid, args.gid if args.gid is not None else args.uid)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"meshlab.proxy: invalid config: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run(config, drop_to=drop_to))
    except OSError as exc:
        print(f"meshlab.proxy: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
