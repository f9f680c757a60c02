"""Upstream HTTP/1.1 keep-alive connection pool, one idle list per endpoint (asyncio).

The connections themselves (connect, stats, the HTTP client protocol) are
:mod:`~meshlab.proxy.upstream.connection`.

Rules:

- :meth:`ConnectionPool.acquire` reuses the most recently released idle connection of the
  endpoint (LIFO, like Envoy's HTTP/1 pool) after checking it is still open: a connection whose
  peer sent FIN or data while idle is closed and counted ``upstream_cx_destroy_remote``.
- A new connection increments ``upstream_cx_total``/``upstream_cx_active``; a failed connect
  increments ``upstream_cx_connect_fail`` (and ``upstream_cx_connect_timeout`` on timeout).
- Connect errors become :class:`ConnectFailure` carrying Envoy's reset reason and transport
  failure reason (``delayed connect error: Connection refused``).
- With the cluster's circuit breakers (:mod:`~meshlab.proxy.upstream.circuit`) ``acquire`` delegates to
  its resource manager (pending queue, ``max_connections``/``max_requests``); new sockets get the
  cluster's socket options and keepalive before connect (:mod:`~meshlab.proxy.upstream.sockopts`).
- :meth:`ConnectionPool.release` keeps a connection only if its response ended and keep-alive holds,
  it is under the cluster's ``max_requests_per_connection`` (else ``upstream_cx_max_requests``),
  and closes it after the pool ``idle_timeout`` unused (``upstream_cx_idle_timeout``; ENVOY.md §8).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from meshlab.proxy.config.policy import DEFAULT_CLUSTER_POLICY, ClusterPolicy
from meshlab.proxy.stats.metrics import ClusterStats
from meshlab.proxy.upstream.connection import UpstreamConnection, open_http
from meshlab.proxy.upstream.router import Address


def _noop() -> None:
    pass


#: (cluster name, endpoint, bind ip) of a pooled connection.
PoolKey = tuple[str | None, Address, str | None]


class ConnectionPool:
    """Idle keep-alive connections keyed by (cluster, endpoint, bind ip).

    Envoy keeps one pool per cluster and host, so two clusters with the same endpoint (two
    Services, one pod) never share a connection or its stats and idle timeout.
    """

    def __init__(self) -> None:
        self._idle: dict[PoolKey, deque[UpstreamConnection]] = {}
        self.reused = 0
        self.created = 0

    async def acquire(self, endpoint: Address, bind_ip: str | None, timeout_s: float,
                      stats: ClusterStats, *, policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY,
                      limits: Any = None) -> tuple[UpstreamConnection, bool]:
        """A usable connection to ``endpoint`` and whether it was reused.

        Args:
            endpoint, bind_ip, timeout_s, stats: where to, from where, connect timeout, stats.
            policy: the cluster policy (socket options, keepalive, pool idle timeout).
            limits: the cluster's circuit breakers; None = unlimited.

        Raises:
            ConnectFailure: a new connection could not be made, or
                :class:`~meshlab.proxy.upstream.circuit.Overflow` (a subclass) from ``limits``.
        """
        if limits is not None:
            return await limits.acquire(self, endpoint, bind_ip, timeout_s, stats, policy)
        conn = self.take_idle(endpoint, bind_ip, stats)
        return (conn, True) if conn is not None else (
            await self.connect(endpoint, bind_ip, timeout_s, stats, policy), False)

    def acquire_idle(self, endpoint: Address, bind_ip: str | None, stats: ClusterStats, *,
                     policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY,
                     limits: Any = None) -> UpstreamConnection | None:
        """:meth:`acquire`'s reuse path without waiting: a pooled connection or None.

        Raises:
            :class:`~meshlab.proxy.upstream.circuit.Overflow`: ``limits``' request limit reached.
        """
        if limits is not None:
            return limits.acquire_idle(self, endpoint, bind_ip, stats, policy)
        return self.take_idle(endpoint, bind_ip, stats)

    def take_idle(self, endpoint: Address, bind_ip: str | None,
                  stats: ClusterStats | None = None) -> UpstreamConnection | None:
        """The most recently pooled usable connection of ``stats``' cluster to ``endpoint``."""
        idle = self._idle.get((getattr(stats, "name", None), endpoint, bind_ip))
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.is_usable():
                self.reused += 1
                return conn
            conn.close(remote=True)  # the upstream closed it while idle
        return None

    async def connect(self, endpoint: Address, bind_ip: str | None, timeout_s: float,
                      stats: ClusterStats, policy: ClusterPolicy = DEFAULT_CLUSTER_POLICY
                      ) -> UpstreamConnection:
        """A new connection (see :func:`~meshlab.proxy.upstream.connection.open_http`).

        Raises:
            ConnectFailure: refused, unreachable, bind or socket-option failure, timeout.
        """
        conn = await open_http(endpoint, bind_ip, timeout_s, stats, policy)
        self.created += 1
        return conn

    def release(self, conn: UpstreamConnection, bind_ip: str | None, *,
                idle_timeout_s: float = 3600.0, max_requests: int = 0) -> None:
        """Return ``conn`` after a complete exchange; keeps it only if keep-alive is possible.

        Args:
            conn: the connection whose exchange completed.
            bind_ip: its source address key.
            idle_timeout_s: the cluster's HTTP pool ``idle_timeout`` (Envoy default 1 h, DR
                ``http.idleTimeout``); a pooled connection idle that long is closed
                (``upstream_cx_idle_timeout``); 0 disables it.
            max_requests: DR ``maxRequestsPerConnection``; a connection that served that many
                requests is closed (``upstream_cx_max_requests``); 0 = unlimited.
        """
        conn.end_request()
        conn.waker = _noop
        if conn.closed or not conn.is_usable():
            conn.close()  # remote when the upstream closed mid-response (peer_closed)
            return
        if max_requests and conn.requests >= max_requests:
            conn.stats.upstream_cx_max_requests.inc()
            conn.close()
            return
        self.park(conn, bind_ip, idle_timeout_s)

    def park(self, conn: UpstreamConnection, bind_ip: str | None,
             idle_timeout_s: float = 3600.0) -> None:
        """Pool an open, idle connection; a request waiting for its host gets it first."""
        if conn.limits is not None and conn.limits.hand_off(conn, bind_ip):
            return
        key = (getattr(conn.stats, "name", None), conn.endpoint, bind_ip)
        self._idle.setdefault(key, deque()).append(conn)
        if idle_timeout_s > 0:
            conn.idle_timer = asyncio.get_running_loop().call_later(
                idle_timeout_s, self._idle_expired, key, conn)

    def _idle_expired(self, key: PoolKey, conn: UpstreamConnection) -> None:
        """Envoy's pool ``idle_timeout`` fired for a pooled connection: close it locally."""
        conn.idle_timer = None
        idle = self._idle.get(key)
        if idle is None or conn not in idle:
            return
        idle.remove(conn)
        conn.stats.upstream_cx_idle_timeout.inc()
        conn.close()

    def close_all(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if conn.idle_timer is not None:
                    conn.idle_timer.cancel()
                conn.close()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"ConnectionPool(idle={idle}, created={self.created}, reused={self.reused})"
