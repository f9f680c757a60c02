"""Envoy's per-cluster resource manager (circuit breakers), default priority (ENVOY.md §3, §8).

Rules (``E:source/common/upstream/resource_manager_impl.h``,
``E:source/common/conn_pool/conn_pool_base.cc``, ``E:source/common/router/retry_state_impl.cc``):

- Four resources per cluster: connections, pending requests, requests, retries. Istio sets every
  threshold to 2^32-1 unless a DestinationRule lowers it, and ``track_remaining: true``.
- A request that finds no idle connection becomes *pending*; when ``max_pending_requests`` is
  reached it fails at once: ``upstream_rq_pending_overflow`` and a 503 ``UO`` local reply.
- A pending request may open a connection only below ``max_connections``; otherwise
  ``upstream_cx_overflow`` is counted and it waits for a connection of its host to be released
  (or for any connection of the cluster to close). A host without any connection always gets
  one (Envoy lets each host pool open one connection past the limit, still counting overflow).
- Attaching a request to a connection checks ``max_requests``; when reached the request fails
  with ``UO`` and ``upstream_rq_pending_overflow`` (Envoy charges the same counter).
- A granted retry holds a ``max_retries`` slot until its attempt ends; without a slot the retry
  is skipped, ``upstream_rq_retry_overflow`` is counted and the stream gets ``UO``.
- Gauges ``circuit_breakers.default.{cx_open,cx_pool_open,rq_pending_open,rq_open,
  rq_retry_open}`` (1 while the resource is at its limit) and ``remaining_{cx,pending,rq,
  retries}``; ``circuit_breakers.high.*_open`` exist with Envoy's defaults (Istio configures only
  the default priority, so ``high`` has no ``remaining_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from meshlab.proxy.cells import (
    CIRCUIT_COUNTS,
    LOCAL,
    Block,
    Cells,
    circuit_block_name,
    circuit_block_size,
    private_block,
)
from meshlab.proxy.config.policy import CircuitBreakers
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.stats.store import StatsStore
from meshlab.proxy.upstream.connection import ConnectFailure

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.proxy.config.policy import ClusterPolicy
    from meshlab.proxy.stats.metrics import ProxyStats
    from meshlab.proxy.upstream.connection import UpstreamConnection
    from meshlab.proxy.upstream.pool import ConnectionPool
    from meshlab.proxy.upstream.router import Address, Cluster

_OPEN_GAUGES = ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")


class Resource:
    """One circuit-breaker resource: a count against ``limit`` with its two gauges.

    The count is kept in cells (:mod:`meshlab.proxy.cells`), one per worker, so every worker of
    a sidecar reads one count, as Envoy's workers share one atomic (``ResourceManagerImpl``);
    a worker changes only its own cell. Like Envoy, the check (:meth:`can_create`) and the
    increment are separate steps: two workers racing for the last unit may both get it.
    """

    __slots__ = ("_all", "_cells", "_mine", "_open", "_remaining", "limit")

    def __init__(self, store: StatsStore, prefix: str, open_name: str, remaining_name: str,
                 limit: int, block: Block | None = None, index: int = 0) -> None:
        self.limit = limit
        block = block or private_block(CIRCUIT_COUNTS)
        self._cells = block.array
        self._mine, self._all = block.count_cells(index)
        self._open = store.gauge(f"{prefix}{open_name}")
        self._remaining = store.gauge(f"{prefix}{remaining_name}")
        self._update()

    @property
    def count(self) -> int:
        """Units in use now (all workers)."""
        cells = self._cells
        total = 0.0
        for i in self._all:
            total += cells[i]
        return int(total)

    def can_create(self) -> bool:
        """True while the count is below the limit."""
        return self.count < self.limit

    def inc(self) -> None:
        """Take one unit."""
        self._cells[self._mine] += 1
        self._update()

    def dec(self) -> None:
        """Give one unit back."""
        self._cells[self._mine] -= 1
        self._update()

    def _update(self) -> None:
        count = self.count
        self._open.set(0 if count < self.limit else 1)
        self._remaining.set(max(0, self.limit - count))

    refresh = _update  # the main process re-reads shared counts before a stats read

    def __repr__(self) -> str:
        return f"Resource({self.count}/{self.limit})"


class Overflow(ConnectFailure):
    """A circuit breaker refused the request (reset reason ``overflow`` → 503 ``UO``; never
    retried, never charged to outlier detection)."""

    def __init__(self, which: str) -> None:
        super().__init__(ResetReason.OVERFLOW)
        self.which = which


class ClusterResources:
    """The resource manager of one cluster plus the queue of pending requests.

    Args:
        thresholds: the cluster's default-priority thresholds.
        store: stats store.
        prefix: the cluster's stat prefix, e.g. ``cluster.outbound|8080||a.ns.svc.cluster.local;.``.
        block: cells for the four counts (:func:`~meshlab.proxy.cells.circuit_block_size`,
            shared between workers), or None for private ones.
    """

    def __init__(self, thresholds: CircuitBreakers, store: StatsStore, prefix: str,
                 block: Block | None = None) -> None:
        cb = f"{prefix}circuit_breakers.default."
        block = block or private_block(CIRCUIT_COUNTS)
        self.connections = Resource(store, cb, "cx_open", "remaining_cx",
                                    thresholds.max_connections, block, 0)
        self.pending = Resource(store, cb, "rq_pending_open", "remaining_pending",
                                thresholds.max_pending_requests, block, 1)
        self.requests = Resource(store, cb, "rq_open", "remaining_rq", thresholds.max_requests,
                                 block, 2)
        self.retries = Resource(store, cb, "rq_retry_open", "remaining_retries",
                                thresholds.max_retries, block, 3)
        store.gauge(f"{cb}cx_pool_open").set(0)  # max_connection_pools: unlimited
        for name in _OPEN_GAUGES:
            store.gauge(f"{prefix}circuit_breakers.high.{name}").set(0)
        self.cx_overflow = store.counter(f"{prefix}upstream_cx_overflow")
        self.pending_overflow = store.counter(f"{prefix}upstream_rq_pending_overflow")
        self.retry_overflow = store.counter(f"{prefix}upstream_rq_retry_overflow")
        self.pending_total = store.counter(f"{prefix}upstream_rq_pending_total")
        self.pending_active = store.gauge(f"{prefix}upstream_rq_pending_active")
        self._host_cx: dict[Address, int] = {}
        self._waiters: list[tuple[Address, str | None, asyncio.Future[UpstreamConnection | None]]] = []

    # -- requests and retries (sans-IO) ---------------------------------------------------------

    def attach(self) -> None:
        """Count a request attached to a connection.

        Raises:
            Overflow: ``max_requests`` reached (``upstream_rq_pending_overflow`` counted).
        """
        if not self.requests.can_create():
            self.pending_overflow.inc()
            raise Overflow("max_requests")
        self.requests.inc()

    def request_done(self) -> None:
        """An attached request ended (response done, reset or connection closed)."""
        self.requests.dec()

    def try_retry(self) -> bool:
        """Take a ``max_retries`` slot for a granted retry; False (and
        ``upstream_rq_retry_overflow``) when none is left."""
        if not self.retries.can_create():
            self.retry_overflow.inc()
            return False
        self.retries.inc()
        return True

    def retry_done(self) -> None:
        """The retried attempt ended: give its slot back."""
        self.retries.dec()

    # -- connections and pending requests (asyncio) ---------------------------------------------

    async def acquire(self, pool: ConnectionPool, endpoint: Address, bind_ip: str | None,
                      timeout_s: float, stats: object, policy: ClusterPolicy
                      ) -> tuple[UpstreamConnection, bool]:
        """A connection to ``endpoint`` within the limits, attached to a new request.

        Returns:
            (connection, reused).

        Raises:
            Overflow: pending or request limit reached.
            ConnectFailure: a new connection could not be made.
        """
        conn = self.acquire_idle(pool, endpoint, bind_ip, stats, policy)
        if conn is not None:
            return conn, True
        if not self.pending.can_create():
            self.pending_overflow.inc()
            raise Overflow("max_pending_requests")
        self.pending.inc()
        self.pending_total.inc()
        self.pending_active.inc()
        try:
            conn, reused = await self._wait_or_connect(pool, endpoint, bind_ip, timeout_s,
                                                       stats, policy)
        finally:
            self.pending.dec()
            self.pending_active.dec()
        return self._attach_to(pool, conn, bind_ip, policy), reused

    def acquire_idle(self, pool: ConnectionPool, endpoint: Address, bind_ip: str | None,
                     stats: object, policy: ClusterPolicy) -> UpstreamConnection | None:
        """:meth:`acquire` without waiting: an idle pooled connection attached to a new request,
        or None when none is pooled (then call :meth:`acquire`).

        Raises:
            Overflow: request limit reached (the connection goes back to the pool).
        """
        conn = pool.take_idle(endpoint, bind_ip, stats)  # type: ignore[arg-type]
        if conn is None:
            return None
        return self._attach_to(pool, conn, bind_ip, policy)

    def _attach_to(self, pool: ConnectionPool, conn: UpstreamConnection, bind_ip: str | None,
                   policy: ClusterPolicy) -> UpstreamConnection:
        try:
            self.attach()
        except Overflow:
            pool.park(conn, bind_ip, policy.http_idle_timeout_s)
            raise
        conn.limits_rq = True
        return conn

    async def _wait_or_connect(self, pool: ConnectionPool, endpoint: Address,
                               bind_ip: str | None, timeout_s: float, stats: object,
                               policy: ClusterPolicy) -> tuple[UpstreamConnection, bool]:
        loop = asyncio.get_running_loop()
        while True:
            conn = pool.take_idle(endpoint, bind_ip, stats)  # type: ignore[arg-type]
            if conn is not None:
                return conn, True
            below = self.connections.can_create()
            if below or not self._host_cx.get(endpoint):
                if not below:
                    self.cx_overflow.inc()
                return await self._connect(pool, endpoint, bind_ip, timeout_s, stats,
                                           policy), False
            self.cx_overflow.inc()
            fut: asyncio.Future[UpstreamConnection | None] = loop.create_future()
            entry = (endpoint, bind_ip, fut)
            self._waiters.append(entry)
            try:
                conn = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.result() is not None:
                    # handed over just as we were cancelled: pool it for the next request
                    pool.park(fut.result(), bind_ip, policy.http_idle_timeout_s)
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            if conn is not None:
                return conn, True

    async def _connect(self, pool: ConnectionPool, endpoint: Address, bind_ip: str | None,
                       timeout_s: float, stats: object, policy: ClusterPolicy
                       ) -> UpstreamConnection:
        self.connections.inc()
        self._host_cx[endpoint] = self._host_cx.get(endpoint, 0) + 1
        try:
            conn = await pool.connect(endpoint, bind_ip, timeout_s, stats, policy)  # type: ignore[arg-type]
        except BaseException:
            self._forget(endpoint)
            raise
        conn.limits = self
        return conn

    def _forget(self, endpoint: Address) -> None:
        self.connections.dec()
        self._host_cx[endpoint] -= 1
        for ep, bip, fut in self._waiters:  # a slot is free: let one waiter try to connect
            if not fut.done():
                fut.set_result(None)
                break

    def hand_off(self, conn: UpstreamConnection, bind_ip: str | None) -> bool:
        """Give a released idle connection to a request waiting for its host (Envoy attaches
        pending streams first). Returns False when nobody waits for it."""
        for ep, bip, fut in self._waiters:
            if ep == conn.endpoint and bip == bind_ip and not fut.done():
                fut.set_result(conn)
                return True
        return False

    def connection_closed(self, conn: UpstreamConnection) -> None:
        """A connection counted here closed: free its slot and wake one waiter."""
        self._forget(conn.endpoint)

    def refresh(self) -> None:
        """Re-read the shared counts into the ``circuit_breakers.default.*`` gauges."""
        for res in (self.connections, self.pending, self.requests, self.retries):
            res.refresh()

    def __repr__(self) -> str:
        return (f"ClusterResources(cx={self.connections!r}, pending={self.pending!r}, "
                f"rq={self.requests!r}, retries={self.retries!r}, waiters={len(self._waiters)})")


class CircuitRegistry:
    """The :class:`ClusterResources` of every cluster of one sidecar, created on first use.

    Args:
        cells: where the counts live (shared between workers; private by default).
    """

    def __init__(self, cells: Cells = LOCAL) -> None:
        self.cells = cells
        self._by_name: dict[str, ClusterResources] = {}

    def get(self, cluster: Cluster, stats: ProxyStats) -> ClusterResources:
        """The resources of ``cluster`` (thresholds from ``cluster.policy``)."""
        res = self._by_name.get(cluster.name)
        if res is None:
            prefix = stats.cluster(cluster.name).prefix
            block = self.cells.block(circuit_block_name(cluster.name),
                                     circuit_block_size(self.cells.workers))
            res = ClusterResources(cluster.policy.circuit_breakers, stats.store, prefix, block)
            self._by_name[cluster.name] = res
        return res

    def refresh(self) -> None:
        """:meth:`ClusterResources.refresh` for every cluster created so far."""
        for res in self._by_name.values():
            res.refresh()

    def __repr__(self) -> str:
        return f"CircuitRegistry({sorted(self._by_name)})"
