"""Numbers every worker of one sidecar shares: circuit-breaker counts and outlier-detection state.

Envoy keeps a cluster's resource manager (``E:source/common/upstream/resource_manager_impl.h``,
atomics) and its outlier detector's host monitors in one place that all worker threads update,
so ``max_connections: 1`` means one connection per cluster, not one per worker, and three
consecutive 5xx eject a host whichever workers served them. meshlab's workers are processes, so
that state lives in one array of doubles in shared memory (an anonymous ``MAP_SHARED`` mapping
made before the fork). A single process uses a plain list, through the same :class:`Cells`.

- **Counts** (circuit breakers) need no lock: each count has one cell per worker, a worker
  changes only its own cell (a connection, request, pending request or retry starts and ends in
  the worker that owns it) and a reader adds the cells up.
- **Outlier state** is read-modify-write by any worker, under one process-shared lock: a POSIX
  record lock (``lockf``) on a memfd, which excludes other processes and costs two system calls
  per critical section (taken only for clusters with outlier detection).

Layout: one named block per cluster, fixed before the fork
(:func:`meshlab.proxy.workers.supervisor.sidecar_layout`). A block asked for under a name or size
the layout does not have is private to the asking process (a worker then behaves as a lone
Envoy worker for that cluster).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
from collections.abc import Iterable, MutableSequence
from types import TracebackType
from typing import Protocol

#: Counts of a circuit-breaker block, each with one cell per worker: connections, pending
#: requests, requests, retries.
CIRCUIT_COUNTS = 4
#: Cells of an outlier block before the hosts: initialised flag, next interval tick (monotonic
#: s), active ejections.
OUTLIER_HEAD = 3
#: Cells per host of an outlier block (see :class:`meshlab.proxy.upstream.outlier.HostMonitor`).
OUTLIER_HOST = 7


class Lock(Protocol):
    """A context-manager lock (:class:`ProcessLock` or :class:`NoLock`)."""

    def __enter__(self) -> object: ...
    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> object: ...


class NoLock:
    """The lock of process-private cells: entering and leaving do nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


NO_LOCK = NoLock()


class ProcessLock:
    """A lock between forked processes: ``lockf`` on a memfd made before the fork (POSIX record
    locks belong to a process, so a child does not inherit its parent's hold). Not reentrant.

    Raises:
        OSError: no memfd could be made.
    """

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd = os.memfd_create("meshlab-cells-lock", os.MFD_CLOEXEC)

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"ProcessLock(fd={self._fd})"


class Block:
    """A run of cells: ``array[start:start + size]`` and the lock that guards updates.

    Attributes:
        array: the backing array (index it as ``array[start + i]`` on hot paths).
        start: first cell.
        size: number of cells.
        lock: take it around read-modify-write updates of cells several processes change.
        shared: True when other processes see these cells.
        workers: cells per count in this block's layout (1 for a private block).
        slot: this process's cell within a count (its worker index).
    """

    __slots__ = ("array", "lock", "shared", "size", "slot", "start", "workers")

    def __init__(self, array: MutableSequence[float], start: int, size: int, lock: Lock,
                 shared: bool, workers: int = 1, slot: int = 0) -> None:
        self.array, self.start, self.size, self.lock = array, start, size, lock
        self.shared, self.workers, self.slot = shared, workers, slot

    def count_cells(self, index: int) -> tuple[int, tuple[int, ...]]:
        """Count ``index`` of a counts block: (this process's cell, every worker's cells)."""
        first = self.start + index * self.workers
        return first + self.slot, tuple(range(first, first + self.workers))

    def __repr__(self) -> str:
        return (f"Block(start={self.start}, size={self.size}, shared={self.shared}, "
                f"workers={self.workers}, slot={self.slot})")


def private_block(size: int) -> Block:
    """A block of ``size`` zeroed cells only this process sees."""
    return Block([0.0] * size, 0, size, NO_LOCK, False)


class Cells:
    """Named blocks of float cells, shared by forked processes when ``shared``.

    Args:
        layout: ``{name: size}``; the order fixes the offsets.
        shared: map the cells in shared memory with a process-shared lock (create before
            ``fork``); False for one process.
        workers: cells per count (the sidecar's concurrency).

    Raises:
        ValueError: a negative size or fewer than one worker.
        OSError: the shared mapping or the lock could not be made.
    """

    def __init__(self, layout: dict[str, int] | Iterable[tuple[str, int]] = (),
                 shared: bool = False, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"cells: workers must be >= 1, got {workers}")
        items = list(layout.items() if isinstance(layout, dict) else layout)
        self._offsets: dict[str, tuple[int, int]] = {}
        total = 0
        for name, size in items:
            if size < 0:
                raise ValueError(f"cells layout: block {name!r} has negative size {size}")
            self._offsets[name] = (total, size)
            total += size
        self.shared = shared
        self.workers = workers
        #: this process's worker index (set in each worker after the fork; the main only reads)
        self.slot = 0
        self.lock: Lock
        self.array: MutableSequence[float]
        if shared:
            self._map = mmap.mmap(-1, max(1, total) * ctypes.sizeof(ctypes.c_double))
            self.array = (ctypes.c_double * max(1, total)).from_buffer(self._map)
            self.lock = ProcessLock()
        else:
            self.array = [0.0] * total
            self.lock = NO_LOCK

    def block(self, name: str, size: int) -> Block:
        """The block ``name`` when the layout has it with exactly ``size`` cells, else a new
        private block (see the module doc)."""
        where = self._offsets.get(name)
        if where is None or where[1] != size:
            return private_block(size)
        return Block(self.array, where[0], size, self.lock, self.shared, self.workers, self.slot)

    def __repr__(self) -> str:
        return f"Cells(blocks={len(self._offsets)}, shared={self.shared}, slot={self.slot})"


#: Cells of a process that shares nothing (tests, ``concurrency: 1``).
LOCAL = Cells()


def circuit_block_name(cluster: str) -> str:
    """Block name of a cluster's circuit-breaker counts."""
    return f"cb:{cluster}"


def circuit_block_size(workers: int) -> int:
    """Cells of a circuit-breaker block for ``workers`` workers."""
    return CIRCUIT_COUNTS * workers


def outlier_block_name(cluster: str) -> str:
    """Block name of a cluster's outlier-detection state."""
    return f"od:{cluster}"


def outlier_block_size(hosts: int) -> int:
    """Cells of an outlier block for ``hosts`` endpoints."""
    return OUTLIER_HEAD + OUTLIER_HOST * hosts
