"""Outlier detection: Envoy's consecutive-5xx and consecutive-gateway-failure detectors (sans-IO).

Rules (``E:source/common/upstream/outlier_detection_impl.cc``; ENVOY.md §3, §8; Istio's
mapping in ``I:pilot/pkg/networking/core/cluster_traffic_policy.go::applyOutlierDetection``):

- Every upstream result is charged to its host as an HTTP code. Local-origin results are mapped
  as Envoy does when ``split_external_local_origin_errors`` is false (Istio's default): a
  connect failure or reset counts as 503, a connect or request timeout as 504; circuit-breaker
  overflows are not charged (no host was used).
- A 5xx increments the host's consecutive-5xx count; 502/503/504 also the gateway count (any
  other 5xx resets it); a non-5xx resets both. Reaching the threshold exactly fires the
  detector once; a threshold of 0 never fires (Istio: ``enforcing_*`` 0).
- Firing on a host that is not ejected counts ``ejections_detected_<type>`` and tries to eject:
  allowed while ``100 * (ejections_active + 1) / hosts <= max_ejection_percent`` (no
  ``always_eject_one_host``: 2 hosts need at least 50 %), else ``ejections_overflow``. An
  ejection counts ``ejections_enforced_total``, ``ejections_enforced_<type>``,
  ``ejections_active`` (and the deprecated ``ejections_total`` for 5xx) and raises the host's
  backoff multiplier, capped so ``base * backoff`` stays below ``max_ejection_time + base``.
- The interval timer (``interval``, started with the detector) un-ejects a host once
  ``min(base_ejection_time * backoff, max_ejection_time)`` has passed since its ejection
  (jitter 0), resetting its counters; a host that stayed healthy for an interval since its
  last un-ejection gets its backoff lowered by one. Ticks are replayed lazily from the clock.
- Load balancing uses the non-ejected hosts; when their share falls below
  ``min_health_percent`` (Istio's ``healthy_panic_threshold``; 0 disables panic) every host is
  used (``lb_healthy_panic``). No host left and no panic → ``UH`` 503 ``no healthy upstream``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, MutableSequence
from typing import TYPE_CHECKING, Protocol

from meshlab.proxy.cells import (
    LOCAL,
    OUTLIER_HEAD,
    OUTLIER_HOST,
    Block,
    Cells,
    outlier_block_name,
    outlier_block_size,
    private_block,
)
from meshlab.proxy.config.policy import ClusterPolicy, OutlierDetection
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.stats.store import StatsStore

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.proxy.stats.metrics import ProxyStats

#: ``(ip, port)`` of an endpoint (the router's ``Address``).
Address = tuple[str, int]


class Cluster(Protocol):
    """What the registry reads of a router cluster
    (:class:`meshlab.proxy.upstream.router.Cluster`)."""

    @property
    def name(self) -> str: ...
    @property
    def policy(self) -> ClusterPolicy: ...
    @property
    def endpoints(self) -> tuple[Address, ...]: ...

#: Envoy ``DEFAULT_MAX_EJECTION_TIME_MS`` (raised to ``base_ejection_time`` when larger).
DEFAULT_MAX_EJECTION_TIME_S = 300.0
_GATEWAY = frozenset({502, 503, 504})
_COUNTERS = tuple(f"ejections_{kind}_{what}" for what in (
    "consecutive_5xx", "success_rate", "consecutive_gateway_failure",
    "consecutive_local_origin_failure", "local_origin_success_rate", "failure_percentage",
    "failure_percentage_local_origin") for kind in ("enforced", "detected")) + (
    "ejections_enforced_total", "ejections_overflow", "ejections_total",
    "ejections_consecutive_5xx", "ejections_success_rate")


_NONE = math.nan  # a time cell that is unset


def _cell(offset: int, kind: type) -> property:
    def get(self: HostMonitor) -> object:
        value = self._cells[self._base + offset]
        if kind is float:
            return None if math.isnan(value) else value
        return kind(value)

    def put(self: HostMonitor, value: object) -> None:
        self._cells[self._base + offset] = _NONE if value is None else float(value)  # type: ignore[arg-type]

    return property(get, put)


class HostMonitor:
    """Outlier state of one host (``DetectorHostMonitorImpl``), held in
    :data:`~meshlab.proxy.cells.OUTLIER_HOST` cells so all workers share it (Envoy's host
    monitors are shared by its worker threads)."""

    __slots__ = ("_base", "_cells")

    consecutive_5xx = _cell(0, int)
    consecutive_gateway = _cell(1, int)
    ejected = _cell(2, bool)
    num_ejections = _cell(3, int)
    backoff = _cell(4, int)
    last_ejection_s = _cell(5, float)
    last_unejection_s = _cell(6, float)

    def __init__(self, cells: MutableSequence[float], base: int) -> None:
        self._cells, self._base = cells, base

    def __repr__(self) -> str:
        return (f"HostMonitor(ejected={self.ejected}, consecutive_5xx={self.consecutive_5xx}, "
                f"backoff={self.backoff})")


class OutlierDetector:
    """Detector of one cluster (``DetectorImpl``); see the module rules.

    Args:
        config: thresholds (Istio mapping applied by the local istiod).
        hosts: the cluster's endpoints.
        store: stats store.
        prefix: the cluster's stat prefix (``cluster.<name>;.``).
        clock: monotonic seconds (``time.monotonic`` is one clock for every process).
        block: :func:`~meshlab.proxy.cells.outlier_block_size` cells shared by the workers
            (interval tick, active ejections, host monitors in sorted host order), or None.
    """

    def __init__(self, config: OutlierDetection, hosts: tuple[Address, ...], store: StatsStore,
                 prefix: str, clock: Callable[[], float] = time.monotonic,
                 block: Block | None = None) -> None:
        self.config = config
        order = sorted(set(hosts))
        block = block or private_block(outlier_block_size(len(order)))
        cells, base = block.array, block.start
        self._cells, self._base, self._lock = cells, base, block.lock
        self.hosts = {h: HostMonitor(cells, base + OUTLIER_HEAD + OUTLIER_HOST * i)
                      for i, h in enumerate(order)}
        self.clock = clock
        self.max_ejection_time_s = max(DEFAULT_MAX_EJECTION_TIME_S, config.base_ejection_time_s)
        od = f"{prefix}outlier_detection."
        self.stats = {name: store.counter(od + name) for name in _COUNTERS}
        self.active = store.gauge(od + "ejections_active")
        self.panic = store.counter(f"{prefix}lb_healthy_panic")
        with self._lock:
            if not cells[base]:  # the first process to create it starts the interval timer
                cells[base] = 1.0
                cells[base + 1] = clock() + config.interval_s
                for mon in self.hosts.values():
                    mon.last_ejection_s = mon.last_unejection_s = None
        self.active.inc(0)  # exists (and is used) from creation, as Envoy's

    @property
    def _next_tick_s(self) -> float:
        return self._cells[self._base + 1]

    @_next_tick_s.setter
    def _next_tick_s(self, value: float) -> None:
        self._cells[self._base + 1] = value

    @property
    def ejections_active(self) -> int:
        """Hosts ejected now (all workers)."""
        return int(self._cells[self._base + 2])

    def _add_active(self, delta: int) -> None:
        self._cells[self._base + 2] += delta
        self.active.inc(delta)

    # -- results --------------------------------------------------------------------------------

    def put_http_code(self, host: Address, code: int) -> None:
        """Charge one response (or mapped local-origin result) to ``host``."""
        with self._lock:
            self._advance()
            mon = self.hosts.get(host)
            if mon is not None:
                self._charge(host, mon, code)

    def _charge(self, host: Address, mon: HostMonitor, code: int) -> None:
        if 500 <= code <= 599:
            if code in _GATEWAY:
                mon.consecutive_gateway += 1
                if mon.consecutive_gateway == self.config.consecutive_gateway_failure:
                    self._fire(host, mon, "consecutive_gateway_failure")
            else:
                mon.consecutive_gateway = 0
            mon.consecutive_5xx += 1
            if mon.consecutive_5xx == self.config.consecutive_5xx:
                self._fire(host, mon, "consecutive_5xx")
        else:
            mon.consecutive_5xx = mon.consecutive_gateway = 0

    def _fire(self, host: Address, mon: HostMonitor, kind: str) -> None:
        if mon.ejected:  # onConsecutiveErrorWorker returns before resetting the counter
            return
        self.stats[f"ejections_detected_{kind}"].inc()
        self._eject(mon, kind)
        if kind == "consecutive_5xx":
            self.stats["ejections_consecutive_5xx"].inc()
            mon.consecutive_5xx = 0
        else:
            mon.consecutive_gateway = 0

    def _eject(self, mon: HostMonitor, kind: str) -> None:
        pct = 100.0 * (self.ejections_active + 1) / len(self.hosts)
        if pct > min(100, self.config.max_ejection_percent):
            self.stats["ejections_overflow"].inc()
            return
        if kind == "consecutive_5xx":
            self.stats["ejections_total"].inc()
        self._add_active(1)
        self.stats["ejections_enforced_total"].inc()
        self.stats[f"ejections_enforced_{kind}"].inc()
        mon.ejected = True
        mon.num_ejections += 1
        mon.last_ejection_s = self.clock()
        base = self.config.base_ejection_time_s
        if mon.backoff * base < self.max_ejection_time_s + base:
            mon.backoff += 1

    # -- interval timer -------------------------------------------------------------------------

    def _advance(self) -> None:
        now = self.clock()
        interval = self.config.interval_s
        for _ in range(100000):  # bounded replay of missed ticks
            if now < self._next_tick_s:
                return
            self._on_interval(self._next_tick_s)
            self._next_tick_s += interval
        self._next_tick_s = now + interval

    def _on_interval(self, now: float) -> None:
        cfg = self.config
        for mon in self.hosts.values():
            if mon.ejected and mon.last_ejection_s is not None and min(
                    cfg.base_ejection_time_s * mon.backoff, self.max_ejection_time_s) <= \
                    now - mon.last_ejection_s:
                self._add_active(-1)
                mon.ejected = False
                mon.consecutive_5xx = mon.consecutive_gateway = 0
                mon.last_unejection_s = now
        for mon in self.hosts.values():
            if not mon.ejected and mon.last_unejection_s is not None and \
                    now - mon.last_unejection_s >= cfg.interval_s and mon.backoff:
                mon.backoff -= 1

    # -- load balancing -------------------------------------------------------------------------

    def is_ejected(self, host: Address) -> bool:
        """Whether ``host`` is ejected now (``/clusters`` ``failed_outlier_check``)."""
        with self._lock:
            self._advance()
            mon = self.hosts.get(host)
            return bool(mon and mon.ejected)

    def healthy(self, endpoints: tuple[Address, ...]) -> tuple[Address, ...]:
        """The endpoints load balancing may use now (see panic rule)."""
        with self._lock:
            self._advance()
            if not self.ejections_active:
                return endpoints
            ok = tuple(e for e in endpoints if not (e in self.hosts and self.hosts[e].ejected))
        if endpoints and 100.0 * len(ok) / len(endpoints) < self.config.min_health_percent:
            self.panic.inc()
            return endpoints
        return ok

    def __repr__(self) -> str:
        ejected = [f"{h[0]}:{h[1]}" for h, m in self.hosts.items() if m.ejected]
        return f"OutlierDetector(hosts={len(self.hosts)}, ejected={ejected})"


class OutlierRegistry:
    """Detectors of one sidecar's clusters, created at a cluster's first charged result.

    With shared cells (the worker model) a detector another worker created is picked up at the
    first load-balancing decision or ``/clusters`` read that needs it, so every worker skips a
    host as soon as any of them ejected it.

    Args:
        clock: monotonic seconds (injectable for tests).
        cells: where detector state lives (shared between workers; private by default).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, cells: Cells = LOCAL) -> None:
        self.clock = clock
        self.cells = cells
        self.stats: ProxyStats | None = None
        self._by_name: dict[str, OutlierDetector] = {}
        self._known: dict[str, tuple[OutlierDetection, tuple[Address, ...]]] = {}

    def bind(self, stats: ProxyStats, cells: Cells) -> None:
        """Use ``stats`` for detectors this registry adopts and ``cells`` for their state."""
        self.stats, self.cells = stats, cells

    def register(self, name: str, config: OutlierDetection, hosts: tuple[Address, ...]) -> None:
        """Declare a cluster whose detector :meth:`is_ejected` may adopt (the main process
        knows clusters from config, not from traffic)."""
        self._known[name] = (config, hosts)

    def _create(self, name: str, config: OutlierDetection, hosts: tuple[Address, ...],
                stats: ProxyStats, adopt_only: bool) -> OutlierDetector | None:
        block = self.cells.block(outlier_block_name(name), outlier_block_size(len(set(hosts))))
        if adopt_only and not (block.shared and block.array[block.start]):
            return None  # no worker has created it yet
        det = OutlierDetector(config, hosts, stats.store, stats.cluster(name).prefix,
                              self.clock, block)
        self._by_name[name] = det
        return det

    def report(self, cluster: Cluster, host: Address | None, code: int,
               stats: ProxyStats) -> None:
        """Charge an upstream result of ``host`` as HTTP ``code`` (503 connect failure or
        reset, 504 timeout). No-op without outlier detection on the cluster."""
        config = cluster.policy.outlier_detection
        if config is None or host is None:
            return
        det = self._by_name.get(cluster.name) or self._create(
            cluster.name, config, cluster.endpoints, stats, False)
        det.put_http_code(host, code)  # type: ignore[union-attr]

    def report_reset(self, cluster: Cluster, host: Address | None, reason: ResetReason,
                     stats: ProxyStats) -> None:
        """Charge a local-origin failure: a timeout as 504 (``LocalOriginTimeout``), any other
        connect failure or reset as 503 (``LocalOriginConnectFailed``); overflow not at all."""
        if cluster.policy.outlier_detection is None or reason is ResetReason.OVERFLOW:
            return
        timeout = reason in (ResetReason.CONNECTION_TIMEOUT, ResetReason.LOCAL_RESET)
        self.report(cluster, host, 504 if timeout else 503, stats)

    def healthy(self, cluster: Cluster) -> tuple[Address, ...]:
        """The endpoints of ``cluster`` that load balancing may use."""
        det = self._by_name.get(cluster.name)
        if det is None:
            config = cluster.policy.outlier_detection
            if config is None or not self.cells.shared or self.stats is None:
                return cluster.endpoints
            det = self._create(cluster.name, config, cluster.endpoints, self.stats, True)
            if det is None:
                return cluster.endpoints
        return det.healthy(cluster.endpoints)

    def is_ejected(self, cluster_name: str, host: Address) -> bool:
        """Whether ``host`` of cluster ``cluster_name`` is ejected (for ``/clusters``)."""
        det = self._by_name.get(cluster_name)
        if det is None and cluster_name in self._known and self.stats is not None:
            det = self._create(cluster_name, *self._known[cluster_name], self.stats, True)
        return det is not None and det.is_ejected(host)

    def detector(self, cluster_name: str) -> OutlierDetector | None:
        """The detector of a cluster, if it was created."""
        return self._by_name.get(cluster_name)

    def __repr__(self) -> str:
        return f"OutlierRegistry({sorted(self._by_name)})"
