"""Server-wide state the admin API reads and changes, with the ``server.*``,
``cluster_manager.*`` and ``listener_manager.*`` stats (sans-IO; ENVOY.md §3, §5).

Rules (Envoy ``source/server``):

- ``server.state`` and ``/ready``: LIVE (0) once initialised; DRAINING (1) while the health
  check is failed (``POST /healthcheck/fail``); ``server.live`` is 0 then.
- ``POST /drain_listeners?graceful`` starts the drain sequence (:attr:`ServerState.draining`)
  and stops the listeners after ``drain_time_s`` (Istio ``drainDuration``, 45 s); without
  ``graceful`` they stop at once. ``inboundonly`` limits it to INBOUND listeners (15006).
- ``server.uptime`` / ``memory_*`` / ``total_connections`` are refreshed at each stats flush.
- Istio readiness reads ``server.state`` == 0 and ``listener_manager.workers_started`` == 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from meshlab.proxy.admin.log_levels import LogLevels
from meshlab.proxy.stats.process_metrics import group_resident_bytes
from meshlab.proxy.stats.store import StatsStore
from meshlab.proxy.stats.trees import StatTree

STATE_NAMES = {0: "LIVE", 1: "DRAINING", 2: "PRE_INITIALIZING", 3: "INITIALIZING"}
#: Istio ``drainDuration`` default, passed to Envoy as ``--drain-time-s``.
ISTIO_DRAIN_TIME_S = 45.0


class ServerStats(StatTree):
    """``server.*``."""

    COUNTERS = ("debug_assertion_failures", "envoy_bug_failures", "envoy_notifications",
                "static_unknown_fields", "dynamic_unknown_fields", "wip_protos",
                "dropped_stat_flushes")
    GAUGES = ("state", "live", "uptime", "concurrency", "memory_allocated", "memory_heap_size",
              "memory_physical_size", "total_connections", "parent_connections",
              "hot_restart_epoch", "hot_restart_generation", "version",
              "days_until_first_cert_expiring", "seconds_until_first_ocsp_response_expiring",
              "stats_recent_lookups")
    HISTOGRAMS = ("initialization_time_ms",)


class ClusterManagerStats(StatTree):
    """``cluster_manager.*``."""

    COUNTERS = ("cluster_added", "cluster_modified", "cluster_removed", "cluster_updated",
                "cluster_updated_via_merge", "update_merge_cancelled",
                "update_out_of_merge_window")
    GAUGES = ("active_clusters", "warming_clusters")


class ListenerManagerStats(StatTree):
    """``listener_manager.*``."""

    COUNTERS = ("listener_added", "listener_modified", "listener_removed", "listener_stopped",
                "listener_create_success", "listener_create_failure",
                "listener_in_place_updated")
    GAUGES = ("total_listeners_warming", "total_listeners_active", "total_listeners_draining",
              "total_filter_chains_draining", "workers_started")


def _rss_bytes(pids: list[int] | None = None) -> int:
    """Resident bytes of this process, or of the sidecar's processes ``pids`` (main and
    workers, shared pages once: :func:`group_resident_bytes`)."""
    return group_resident_bytes([Path("/proc") / str(p) for p in (pids or ["self"])])


class ServerState:
    """Health, drain and logging state of one sidecar and its server-level stats.

    Args:
        store: the stats store.
        start_s: process start (epoch seconds).
        clusters: number of clusters (``cluster_manager.active_clusters``).
        listeners: number of listeners (``listener_manager.total_listeners_active``).
        drain_time_s: graceful drain duration.
        connections: returns the current downstream connection count (``total_connections``).
        concurrency: worker count (``server.concurrency``; Envoy ``--concurrency``).
        pids: returns the sidecar's processes, whose memory ``server.memory_*`` adds up
            (None: this process).
    """

    def __init__(self, store: StatsStore, *, start_s: float | None = None, clusters: int = 0,
                 listeners: int = 0, drain_time_s: float = ISTIO_DRAIN_TIME_S,
                 connections: Callable[[], int] | None = None, concurrency: int = 1,
                 pids: Callable[[], list[int]] | None = None) -> None:
        self.start_s = time.time() if start_s is None else start_s
        self.drain_time_s = drain_time_s
        self.health_check_failed = False
        self.draining = False
        self.stopped: set[str] = set()  # "INBOUND"/"OUTBOUND"/"ALL" listener groups stopped
        self.logging = LogLevels()
        self._connections = connections
        self._pids = pids
        self.concurrency = concurrency
        self.server = ServerStats(store, "server.")
        self.cluster_manager = ClusterManagerStats(store, "cluster_manager.")
        self.listener_manager = ListenerManagerStats(store, "listener_manager.")
        self.server.concurrency.set(concurrency)
        self.server.initialization_time_ms.record(0)
        self.cluster_manager.active_clusters.set(clusters)
        self.cluster_manager.cluster_added.inc(clusters)
        self.listener_manager.listener_added.inc(listeners)
        self.listener_manager.listener_create_success.inc(listeners)
        self.listener_manager.total_listeners_active.set(listeners)
        self.listener_manager.workers_started.set(1)
        self.refresh()

    @property
    def state(self) -> int:
        """``server.state``: 0 LIVE, 1 DRAINING (health check failed)."""
        return 1 if self.health_check_failed else 0

    @property
    def state_name(self) -> str:
        """``LIVE`` / ``DRAINING``."""
        return STATE_NAMES[self.state]

    @property
    def uptime_s(self) -> int:
        """Whole seconds since start."""
        return int(time.time() - self.start_s)

    def fail_healthcheck(self, fail: bool) -> None:
        """``POST /healthcheck/fail`` (True) or ``/healthcheck/ok`` (False)."""
        self.health_check_failed = fail
        self.server.live.set(0 if fail else 1)
        self.server.state.set(self.state)

    def listeners_stopped(self, group: str, count: int) -> None:
        """Account ``count`` listeners of ``group`` (``INBOUND``/``ALL``) stopped."""
        self.stopped.add(group)
        self.listener_manager.listener_stopped.inc(count)
        active = self.listener_manager.total_listeners_active
        active.set(max(0, active.value - count))

    def refresh(self) -> None:
        """Update the gauges Envoy refreshes at each stats flush."""
        s = self.server
        s.state.set(self.state)
        s.live.set(0 if self.health_check_failed else 1)
        s.uptime.set(self.uptime_s)
        rss = _rss_bytes(self._pids() if self._pids is not None else None)
        s.memory_allocated.set(rss)
        s.memory_heap_size.set(rss)
        s.memory_physical_size.set(rss)
        if self._connections is not None:
            s.total_connections.set(self._connections())
        self.listener_manager.total_listeners_draining.set(
            self.listener_manager.total_listeners_active.value if self.draining else 0)

    def __repr__(self) -> str:
        return (f"ServerState({self.state_name}, draining={self.draining}, "
                f"stopped={sorted(self.stopped)})")
