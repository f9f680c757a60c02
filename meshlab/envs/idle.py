"""Idle CPU priority for observers (DESIGN.md §7): the collectors' threads and the lab's
Prometheus run at ``SCHED_IDLE``, so they only get CPU that the data path (sidecars, apps,
load) leaves over.

``SCHED_IDLE`` (``sched(7)``) is for "very low priority background jobs": such a thread runs
only when no normal thread of its CPU is runnable (CFS weight 3 against 1024 for nice 0).
``sched_setscheduler(0, …)`` changes the *calling thread* on Linux (a pid argument names one
task), so each observer thread sets it for itself; a child process inherits it. Entering
``SCHED_IDLE`` needs no privilege, but a seccomp profile or an old kernel may refuse it: then
the thread falls back to nice 19 (``setpriority(PRIO_PROCESS, tid, 19)``, also per thread).
"""

from __future__ import annotations

import os
import shutil
import threading
from functools import lru_cache
from pathlib import Path

from meshlab.envs.base import run_argv
from meshlab.errors import MeshlabError

IDLE, NICE19, UNCHANGED = "idle", "nice19", "unchanged"
"""What :func:`make_thread_idle` achieved."""
NICE = 19


def make_thread_idle() -> str:
    """Put the calling thread at ``SCHED_IDLE``, else at nice 19.

    Returns:
        :data:`IDLE`, :data:`NICE19`, or :data:`UNCHANGED` when both were refused. Never
        raises.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return IDLE
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        return NICE19
    except OSError:
        return UNCHANGED


@lru_cache(maxsize=1)
def idle_argv_prefix() -> tuple[str, ...]:
    """The argv prefix that starts a program at idle priority: ``chrt --idle 0`` (util-linux)
    when it works here, else ``nice -n 19`` (coreutils), else nothing (checked once, by
    running ``chrt --idle 0 true``)."""
    chrt = shutil.which("chrt")
    if chrt:
        try:
            if run_argv([chrt, "--idle", "0", "true"], check=False, timeout_s=10).ok:
                return (chrt, "--idle", "0")
        except MeshlabError:
            pass
    nice = shutil.which("nice")
    return (nice, "-n", str(NICE)) if nice else ()


def policy_of(pid: int, tid: int | None = None) -> str:
    """The scheduling policy of a task as ``/proc/<pid>/task/<tid>/sched`` names it
    (``SCHED_IDLE``, ``SCHED_OTHER``, ``SCHED_BATCH``, ``SCHED_FIFO``, ``SCHED_RR``, or the
    number); ``tid`` defaults to ``pid`` (the main thread).

    Raises:
        OSError: no such task.
    """
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_BATCH: "SCHED_BATCH",
             os.SCHED_IDLE: "SCHED_IDLE", os.SCHED_FIFO: "SCHED_FIFO",
             os.SCHED_RR: "SCHED_RR"}
    text = Path(f"/proc/{pid}/task/{tid or pid}/sched").read_text()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "policy":
            return names.get(int(value), value.strip())
    raise OSError(f"/proc/{pid}/task/{tid or pid}/sched has no policy line")


def nice_of(pid: int, tid: int | None = None) -> int:
    """The nice value of a task (``/proc/<pid>/task/<tid>/stat`` field 19).

    Raises:
        OSError: no such task.
    """
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])
