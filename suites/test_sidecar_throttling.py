"""A CPU-limited sidecar: L1's ``istio-proxy`` container given a CPU limit live (``cpu-limit``:
a CFS quota per 100 ms period) sized just above its measured average need — the common way a
proxy limit is chosen — under Poisson arrivals, whose bursts need more than the average.

- **Phenomenon**: ``nr_throttled`` of L1's sidecar cgroup climbs; a request that arrives after a
  burst has spent the period's quota waits for the next period, so the tail grows far more
  than the median. The limit is 1.1 × the cores the sidecar used in the same test's baseline
  (observers included: the collectors' and Prometheus' reads run in its cgroup, as Envoy's
  admin does), so the test holds on a faster or slower machine alike; a fixed ``100m`` at a
  fixed rate swung here from 5 to 47 throttled periods between runs. At 1.25 × the signal was
  too weak beside a busy core (``stress-ng --cpu 1``: 4 throttled periods, p99 ratio 1.31, a
  failed run). Measured at 1.1 ×, 80 req/s for 8 s (need 106–131m): quiet, 42–46 periods
  throttled and p99 7.0–8.9 → 74–101 ms (8.3–14.4×); beside ``stress-ng --cpu 1``, 26–56
  periods and p99 15.6–25.2 → 140–177 ms (5.6–9.0×).
- **Mitigation** (Istio's advice: no CPU limit on the proxy, a request only): with the limit
  removed the same load's p99 is back at the baseline's.

The containers series (CPU cores per container, the limit, throttled periods per second) is
in the report.
"""

import time

from meshlab import CpuLimit, ErrorRateAtMost, Run, StatAtLeast, StatAtMost

L1 = "fortio-server"
SIDECAR = "istio-proxy"
URL = f"http://{L1}:8070/echo"
RATE_PER_S = 80
HEADROOM = 1.1  # the limit over the baseline's average need
DURATION_S = 8
# Unthrottled, p99 stays near the baseline's (ratio ~1; the no-limit check below). Throttled it
# measured 8.3-14.4x quiet and 5.6-9.0x beside `stress-ng --cpu 1` (the busy core lifts the
# baseline's p99): 2.0 keeps the check able to fail without flaking.
P99_RATIO_MIN = 2.0


def _load(run: Run, name: str) -> dict[str, float]:
    result = run.load(name, URL, users=8, rate_per_s=RATE_PER_S, duration_s=DURATION_S,
                      mode="open-loop", distribution="poisson")
    return {"p50_ms": result.latency_us["p50"] / 1000, "p99_ms": result.latency_us["p99"] / 1000}


def test_a_sidecar_cpu_limit_near_its_need_throttles_the_tail_and_removing_it_restores_it(
        meshlab_run: Run) -> None:
    l1 = meshlab_run.names.pod(L1)
    meshlab_run.load("warm-up", URL, users=4, duration_s=2, max_requests=100)
    start, t0 = meshlab_run.container_usage(l1)[SIDECAR], time.monotonic()
    base = _load(meshlab_run, "baseline")
    before, t1 = meshlab_run.container_usage(l1)[SIDECAR], time.monotonic()
    need_m = (before["cpu_usage_us"] - start["cpu_usage_us"]) / 1000 / (t1 - t0)
    limit_m = max(1, round(HEADROOM * need_m))
    with meshlab_run.fault(CpuLimit(target=l1, container=SIDECAR, cpu_m=limit_m),
                           max_duration_s=60):
        limited = _load(meshlab_run, "limited-100m")
        during = meshlab_run.container_usage(l1)[SIDECAR]
    unlimited = _load(meshlab_run, "no-limit")
    meshlab_run.observe("throttling", "latency_compare", {
        "baseline_p50_ms": base["p50_ms"], "baseline_p99_ms": base["p99_ms"],
        "limited_p50_ms": limited["p50_ms"], "limited_p99_ms": limited["p99_ms"],
        "no_limit_p99_ms": unlimited["p99_ms"],
        "p99_ratio": round(limited["p99_ms"] / base["p99_ms"], 2),
        "p50_ratio": round(limited["p50_ms"] / base["p50_ms"], 2),
        "tail_over_median_rise": round((limited["p99_ms"] - base["p99_ms"])
                                       / max(limited["p50_ms"] - base["p50_ms"], 1.0), 2),
        "nr_throttled": during["nr_throttled"] - before["nr_throttled"],
        "throttled_ms": (during["throttled_us"] - before["throttled_us"]) / 1000,
        "baseline_need_m": round(need_m, 1), "cpu_limit_m_during": during["cpu_limit_m"]},
        pod=l1)
    meshlab_run.check(
        StatAtLeast("throttling", "nr_throttled", 5, label="L1 sidecar throttled periods"),
        StatAtLeast("throttling", "p99_ratio", P99_RATIO_MIN,
                    label="p99 under the limit / baseline p99"),
        StatAtLeast("throttling", "tail_over_median_rise", 2.0,
                    label="p99 rise / p50 rise (ms per ms)"),
        StatAtMost("throttling", "no_limit_p99_ms", 2 * base["p99_ms"] + 5,
                   label="p99 with the limit removed (ms)"),
        ErrorRateAtMost(0.0, load="limited-100m"),
    )
