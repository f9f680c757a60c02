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

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

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


@dataclass
class HostMonitor:
    """Outlier state of one host (``DetectorHostMonitorImpl``)."""

    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejected: bool = False
    num_ejections: int = 0
    backoff: int = 0
    last_ejection_s: float | None = None
    last_unejection_s: float | None = None


class OutlierDetector:
    """Detector of one cluster (``DetectorImpl``); see the module rules.

    Args:
        config: thresholds (Istio mapping applied by the local istiod).
        hosts: the cluster's endpoints.
        store: stats store.
        prefix: the cluster's stat prefix (``cluster.<name>;.``).
        clock: monotonic seconds.
    """

    def __init__(self, config: OutlierDetection, hosts: tuple[Address, ...], store: StatsStore,
                 prefix: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.hosts = {h: HostMonitor() for h in hosts}
        self.clock = clock
        self.max_ejection_time_s = max(DEFAULT_MAX_EJECTION_TIME_S, config.base_ejection_time_s)
        od = f"{prefix}outlier_detection."
        self.stats = {name: store.counter(od + name) for name in _COUNTERS}
        self.active = store.gauge(od + "ejections_active")
        self.active.set(0)
        self.panic = store.counter(f"{prefix}lb_healthy_panic")
        self._next_tick_s = clock() + config.interval_s

    # -- results --------------------------------------------------------------------------------

    def put_http_code(self, host: Address, code: int) -> None:
        """Charge one response (or mapped local-origin result) to ``host``."""
        self._advance()
        mon = self.hosts.get(host)
        if mon is None:
            return
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
        pct = 100.0 * (self.active.value + 1) / len(self.hosts)
        if pct > min(100, self.config.max_ejection_percent):
            self.stats["ejections_overflow"].inc()
            return
        if kind == "consecutive_5xx":
            self.stats["ejections_total"].inc()
        self.active.inc()
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
                self.active.dec()
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
        self._advance()
        mon = self.hosts.get(host)
        return bool(mon and mon.ejected)

    def healthy(self, endpoints: tuple[Address, ...]) -> tuple[Address, ...]:
        """The endpoints load balancing may use now (see panic rule)."""
        self._advance()
        if not self.active.value:
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

    Args:
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_name: dict[str, OutlierDetector] = {}

    def report(self, cluster: Cluster, host: Address | None, code: int,
               stats: ProxyStats) -> None:
        """Charge an upstream result of ``host`` as HTTP ``code`` (503 connect failure or
        reset, 504 timeout). No-op without outlier detection on the cluster."""
        config = cluster.policy.outlier_detection
        if config is None or host is None:
            return
        det = self._by_name.get(cluster.name)
        if det is None:
            det = OutlierDetector(config, cluster.endpoints, stats.store,
                                  stats.cluster(cluster.name).prefix, self.clock)
            self._by_name[cluster.name] = det
        det.put_http_code(host, code)

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
        return cluster.endpoints if det is None else det.healthy(cluster.endpoints)

    def is_ejected(self, cluster_name: str, host: Address) -> bool:
        """Whether ``host`` of cluster ``cluster_name`` is ejected (for ``/clusters``)."""
        det = self._by_name.get(cluster_name)
        return det is not None and det.is_ejected(host)

    def detector(self, cluster_name: str) -> OutlierDetector | None:
        """The detector of a cluster, if it was created."""
        return self._by_name.get(cluster_name)

    def __repr__(self) -> str:
        return f"OutlierRegistry({sorted(self._by_name)})"
