"""Outlier detection state machine (sans-IO, injectable clock): Envoy's consecutive-5xx and
gateway detectors, max_ejection_percent, interval-driven un-ejection with backoff, panic."""

from meshlab.proxy.config.policy import ClusterPolicy, OutlierDetection
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.outlier import OutlierDetector, OutlierRegistry
from meshlab.proxy.upstream.router import Cluster

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)
P = "cluster.c;."


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _det(clock, hosts=(A, B), **kw) -> tuple[OutlierDetector, StatsStore]:
    store = StatsStore(StatsMatcher(include_all=True))
    cfg = OutlierDetection(**{"consecutive_5xx": 3, "interval_s": 1.0,
                              "base_ejection_time_s": 5.0, "max_ejection_percent": 100, **kw})
    return OutlierDetector(cfg, tuple(hosts), store, P, clock), store


def _v(store: StatsStore, name: str) -> int:
    return store.value(f"{P}outlier_detection.{name}") or 0


def test_consecutive_5xx_ejects_exactly_at_threshold_and_success_resets():
    clock = Clock()
    det, store = _det(clock)
    for code in (503, 500, 200, 503, 502):  # a 200 in between resets the streak
        det.put_http_code(A, code)
    assert not det.is_ejected(A)
    det.put_http_code(A, 500)
    assert det.is_ejected(A) and det.healthy((A, B)) == (B,)
    for name, value in (("ejections_active", 1), ("ejections_enforced_total", 1),
                        ("ejections_enforced_consecutive_5xx", 1),
                        ("ejections_detected_consecutive_5xx", 1), ("ejections_total", 1)):
        assert _v(store, name) == value, name
    det.put_http_code(A, 503)  # already ejected: nothing more is detected
    assert _v(store, "ejections_detected_consecutive_5xx") == 1


def test_uneject_on_interval_ticks_with_backoff():
    clock = Clock()
    det, store = _det(clock)
    for _ in range(3):
        det.put_http_code(A, 503)
    clock.now += 4.99
    assert det.is_ejected(A)
    clock.now += 1.0  # base 5 s passed; the next interval tick un-ejects
    assert not det.is_ejected(A)
    assert _v(store, "ejections_active") == 0
    for _ in range(3):  # second ejection: base * 2
        det.put_http_code(A, 503)
    clock.now += 9.0
    assert det.is_ejected(A)
    clock.now += 2.0
    assert not det.is_ejected(A)
    assert det.hosts[A].num_ejections == 2


def test_max_ejection_percent_without_always_eject_one_host():
    clock = Clock()
    det, store = _det(clock, max_ejection_percent=10)
    for _ in range(3):
        det.put_http_code(A, 503)
    assert not det.is_ejected(A)  # 1 of 2 hosts = 50 % > 10 %
    assert _v(store, "ejections_overflow") == 1
    assert _v(store, "ejections_detected_consecutive_5xx") == 1


def test_gateway_failures_and_local_origin_mapping():
    clock = Clock()
    det, store = _det(clock, hosts=(A, B, C), consecutive_5xx=0, consecutive_gateway_failure=2)
    det.put_http_code(A, 500)  # a non-gateway 5xx resets the gateway streak
    det.put_http_code(A, 504)
    assert not det.is_ejected(A)
    det.put_http_code(A, 503)
    assert det.is_ejected(A)
    assert _v(store, "ejections_enforced_consecutive_gateway_failure") == 1
    assert _v(store, "ejections_total") == 0  # deprecated counter: 5xx / success rate only
    stats = ProxyStats(StatsStore(StatsMatcher(include_all=True)))
    reg = OutlierRegistry(clock)
    cl = Cluster("c", "outbound", "http", 80, (A, B, C), policy=ClusterPolicy(
        outlier_detection=OutlierDetection(consecutive_5xx=2, max_ejection_percent=50)))
    reg.report_reset(cl, B, ResetReason.OVERFLOW, stats)  # overflow: not charged
    reg.report_reset(cl, B, ResetReason.CONNECTION_TIMEOUT, stats)  # 504
    assert not reg.is_ejected("c", B)
    reg.report_reset(cl, B, ResetReason.REMOTE_CONNECTION_FAILURE, stats)  # 503
    assert reg.is_ejected("c", B)
    assert reg.healthy(cl) == (A, C)


def test_all_ejected_gives_no_host_unless_panic():
    clock = Clock()
    det, _ = _det(clock)
    for host in (A, B):
        for _ in range(3):
            det.put_http_code(host, 503)
    assert det.healthy((A, B)) == ()  # → UH no healthy upstream
    det2, store2 = _det(clock, min_health_percent=60)
    for _ in range(3):
        det2.put_http_code(A, 503)
    assert det2.healthy((A, B)) == (A, B)  # 50 % healthy < 60 %: panic, every host
    assert store2.value(f"{P}lb_healthy_panic") == 1
