"""Injected latency on the L1→L2 hop (``network-delay`` on L2's ingress: every packet L1's
sidecar sends to L2 waits).

- **Resolution**: 10 ms ± 2 ms added to the hop must show as a p50 shift of 10 ms (± 2) at the
  client, measured against a baseline in the same test: the lab's own floor is quiet enough
  for a 10 ms fault to be seen, not lost in the noise.
- **Phenomenon with a route timeout**: 200 ms on the hop while L1's VirtualService gives L2
  100 ms (overlay ``route-timeout``): L1's outbound answers 504 with response flag ``UT``
  (upstream request timeout) and the cluster's ``upstream_rq_timeout`` counter rises by as many.
- **Mitigation** (overlays ``ha-l2`` + ``ha-l2-timeouts``: two L2 replicas on different nodes,
  ``perTryTimeout`` 500 ms with 2 retries on another host, 300 ms connect timeout, ejection after
  one gateway error): 1 s on L2-0's ingress only. An attempt on L2-0 gives up at its per-try (or
  connect) timeout and is retried on L2-1, L2-0 is ejected, so no request fails and none waits
  for the delayed replica: p100 stays under per-try timeout + backoff + the healthy replica's
  latency, below the delay itself. Measured here: 250 of 250 answered, p99 330 ms, p100 513 ms;
  at L1 8 retries, 2 per-try timeouts, 6 connect timeouts, 1 ejection.
"""

import pytest

from meshlab import (
    ErrorRateAtMost,
    LatencyPercentileAtMost,
    NetworkDelay,
    ResponseFlagsCount,
    Run,
    StatAtLeast,
)
from meshlab.collectors.envoy_stats import delta, snapshot

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
PER_TRY_TIMEOUT_MS = 500  # overlay ha-l2-timeouts
URL = f"http://{L1}:8070/echo?size=100"
RATE_PER_S = 50
DURATION_S = 5


def test_a_10ms_delay_is_visible_at_the_client(meshlab_run: Run) -> None:
    """Baseline, then the same open-loop load with 10 ± 2 ms on the L1→L2 hop: p50 moves by
    10 ms (± 2), and nothing fails."""
    lab = meshlab_run.names
    meshlab_run.load("warm-up", URL, users=2, duration_s=2, max_requests=40)
    base = meshlab_run.load("baseline", URL, users=4, rate_per_s=RATE_PER_S,
                            duration_s=DURATION_S, mode="open-loop")
    fault = NetworkDelay(target=lab.pod(L2), delay_ms=10, jitter_ms=2, direction="ingress")
    with meshlab_run.fault(fault, max_duration_s=60):
        delayed = meshlab_run.load("delay-10ms", URL, users=4, rate_per_s=RATE_PER_S,
                                   duration_s=DURATION_S, mode="open-loop")
    shift_ms = (delayed.latency_us["p50"] - base.latency_us["p50"]) / 1000
    meshlab_run.observe("p50-shift", "latency_compare",
                        {"baseline_p50_ms": base.latency_us["p50"] / 1000,
                         "delayed_p50_ms": delayed.latency_us["p50"] / 1000,
                         "shift_ms": round(shift_ms, 3), "asked_ms": 10,
                         "backend": fault.backend_used})
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="delay-10ms"),
        StatAtLeast("p50-shift", "shift_ms", 8.0, label="p50 shift (ms), asked 10"),
        LatencyPercentileAtMost(50, at_most=base.latency_us["p50"] / 1000 + 12,
                                load="delay-10ms"),
    )


@pytest.mark.meshlab_lab(overlays=["route-timeout"])
def test_a_delay_past_the_route_timeout_gives_504_ut(meshlab_run: Run) -> None:
    """200 ms on the hop, 100 ms route timeout: every request ends 504 ``UT`` at L1's
    outbound, and ``upstream_rq_timeout`` counts them."""
    lab = meshlab_run.names
    l1, cluster = lab.pod(L1), lab.outbound_cluster(L2, L2_PORT)
    counter = f"cluster.{cluster};.upstream_rq_timeout"
    before = snapshot(meshlab_run.env, l1, "upstream_rq_timeout")
    with meshlab_run.fault(NetworkDelay(target=lab.pod(L2), delay_ms=200, direction="ingress"),
                           max_duration_s=60):
        load = meshlab_run.load("delay-200ms", URL, users=2, duration_s=3, max_requests=20)
    timeouts = delta(before, snapshot(meshlab_run.env, l1, "upstream_rq_timeout")).get(counter, 0)
    meshlab_run.observe("upstream_rq_timeout", "envoy_stats", {counter: timeouts}, pod=l1)
    assert load.requests == 20 and load.status_counts.get("504", 0) == 20, load.status_counts
    meshlab_run.check(
        ResponseFlagsCount(l1, cluster=cluster, flag="UT", at_least=20),
        ResponseFlagsCount(l1, cluster=cluster, flag="-", at_most=0),
        StatAtLeast("upstream_rq_timeout", counter, 20, label="upstream_rq_timeout"),
    )


@pytest.mark.meshlab_lab(overlays=["ha-l2", "ha-l2-timeouts"])
def test_per_try_timeout_and_a_healthy_replica_bound_the_delay(meshlab_run: Run) -> None:
    """1 s on L2-0 only, per-try timeout and a second replica: 0 errors, every request under
    the delay (per-try timeout + backoff + L2-1's latency), retries and ejection counted."""
    env, lab = meshlab_run.env, meshlab_run.names
    l1, cluster = lab.pod(L1), lab.outbound_cluster(L2, L2_PORT)
    names = [f"cluster.{cluster};.{stat}" for stat in (
        "upstream_rq_retry", "upstream_rq_per_try_timeout", "upstream_cx_connect_timeout",
        "outlier_detection.ejections_enforced_total")]
    meshlab_run.load("warm-up", URL, users=4, duration_s=2, max_requests=40)
    before = snapshot(env, l1, "upstream_rq_retry|per_try|connect_timeout|ejections")
    with meshlab_run.fault(NetworkDelay(target=lab.pod(L2, 0), delay_ms=1000,
                                        direction="ingress"), max_duration_s=60):
        meshlab_run.load("delay-l2-0", URL, users=8, rate_per_s=RATE_PER_S,
                         duration_s=DURATION_S, mode="open-loop")
    moved = delta(before, snapshot(env, l1, "upstream_rq_retry|per_try|connect_timeout|"
                                            "ejections"))
    meshlab_run.observe("l1-resilience", "envoy_stats", {n: moved.get(n, 0) for n in names},
                        pod=l1)
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="delay-l2-0"),
        LatencyPercentileAtMost(100, at_most=PER_TRY_TIMEOUT_MS + 250, load="delay-l2-0"),
        StatAtLeast("l1-resilience", names[0], 1, label="upstream_rq_retry"),
        StatAtLeast("l1-resilience", names[3], 1, label="L2-0 ejected (ejections_enforced)"),
    )
