"""Process set-up shared by the single-process sidecar, its main process and its workers:
privilege drop, garbage-collector tuning and the event loop factory."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
from collections.abc import Callable


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid:gid`` (Istio's proxy user 1337) after the listeners are bound.

    The local lab starts the sidecar as root so it can run from any checkout (a venv under
    ``/root`` is not readable by uid 1337) and then drops here, before any traffic flows: from
    then on every socket the sidecar opens is owned by 1337 and exempt from the capture rules,
    as istio-proxy's are. Every module it needs is imported by then.

    Afterwards the process is made dumpable again so the sidecar's main process (same uid)
    can read a worker's ``/proc/<pid>/fd``.

    Raises:
        PermissionError: the process may not change its ids.
    """
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    _set_dumpable()


def _set_dumpable() -> None:
    """``prctl(PR_SET_DUMPABLE, 1)``: changing uid made the process non-dumpable, which hides
    its ``/proc/<pid>/fd`` from its own user; the main reads its workers' there. Best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        pass


#: ``<linux/prctl.h>``.
PR_SET_DUMPABLE = 4


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
