"""L2's egress limited to 1 Mbit/s (``bandwidth``: a tbf on L2's ``eth0``), under 1 KB and
64 KB responses.

- **Phenomenon**: tail latency grows with response size — a 64 KiB response needs about 0.54 s
  of a 1 Mbit/s link (frame bytes), a 1 KiB one about 10 ms — and L2's inbound listener holds
  what it cannot send yet: ``listener.0.0.0.0_15006.tcp_stats.cx_tx_unsent_bytes``
  (``tcpi_notsent_bytes``) is non-zero while the 64 KiB responses drain. Nothing fails: a slow
  link is latency, not errors. Only L2 → L1 is limited (``peer_pod``): unfiltered, the lab's
  own Prometheus scrapes of L2 (about 170 KiB each, two every 5 s) share the link and hold
  even 1 KiB answers for up to seconds.
- **Mitigation** (overlay ``route-timeout``: L1 gives L2 100 ms): every 64 KiB request ends at
  the timeout with ``UT`` (upstream request timeout) at L1's outbound instead of holding the
  client for half a second or more, while 1 KiB requests still pass. How the client sees it
  depends on whether L2's response head got through the queue in time: if not, a 504; if it
  did, Envoy (and the sidecar) resets the stream mid-body, and fortio's ``-M`` proxy in L1 ends
  its own chunked response there — a *200 with a truncated body*, a real way a route timeout
  can look like success to a client. The tbf queue still holds the reset responses' packets
  (up to its limit), so after the first few requests the heads come late: in runs here 16 or
  17 of 20 were 504, the first 3 or 4 truncated 200s, all within 108 ms.

Measured here (three runs alike): 64 KiB p50 551 ms under the limit (3 ms without), 1 KiB p50
2 ms under it; peak ``cx_tx_unsent_bytes`` at L2's listener 48,527 bytes (17 of 23 samples
non-zero).
"""

import pytest

from meshlab import (
    Bandwidth,
    ErrorRateAtMost,
    LatencyPercentileAtMost,
    ResponseFlagsCount,
    Run,
    StatAtLeast,
)
from meshlab.collectors.envoy_stats import StatsPoller, listener_tcp_stat

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
SMALL_URL = f"http://{L1}:8070/echo?size=1024"
LARGE_URL = f"http://{L1}:8070/echo?size=65536"
RATE_MBIT = 1.0
LARGE_S = 0.5  # 64 KiB at 1 Mbit/s is 0.52 s of payload alone: no 64 KiB answer comes sooner
ROUTE_TIMEOUT_MS = 100  # overlay route-timeout
L2_UNSENT = listener_tcp_stat(15006, "cx_tx_unsent_bytes")


def shaped(run: Run) -> Bandwidth:
    """The fault: what L2-0 sends to L1-0 leaves at RATE_MBIT at most (``peer_pod``: the lab's
    Prometheus scrapes of L2, 170 KiB each, are not limited — on a shared 1 Mbit/s link they
    would take half of it and set every answer's latency, whatever its size)."""
    return Bandwidth(target=run.names.pod(L2), rate_mbit=RATE_MBIT, peer_pod=run.names.pod(L1),
                     direction="egress")


def test_a_1mbit_link_makes_large_responses_slow(meshlab_run: Run) -> None:
    """Under the limit, 64 KiB responses take ≥ 0.5 s (the link's time for them) and at least
    ten times as long as 1 KiB ones; L2's listener shows unsent bytes; nothing fails."""
    env, lab = meshlab_run.env, meshlab_run.names
    l2 = lab.pod(L2)
    meshlab_run.load("warm-up", LARGE_URL, users=2, duration_s=2, max_requests=10)
    base = meshlab_run.load("baseline-64k", LARGE_URL, users=2, duration_s=5, max_requests=20)
    with (meshlab_run.fault(shaped(meshlab_run), max_duration_s=90),
          StatsPoller(env, l2, filter_regex="cx_tx_unsent_bytes") as poll):
        small = meshlab_run.load("limited-1k", SMALL_URL, users=2, duration_s=5,
                                 max_requests=20)
        large = meshlab_run.load("limited-64k", LARGE_URL, users=1, duration_s=15,
                                 max_requests=10, timeout_s=20)
    meshlab_run.observe("l2-unsent", "envoy_stats", poll.max_values([L2_UNSENT]), pod=l2,
                        reduce="max", samples=len(poll.samples),
                        nonzero_samples=poll.nonzero_samples(L2_UNSENT), errors=poll.errors[:5])
    meshlab_run.observe("p50-by-size", "latency_compare",
                        {"baseline_64k_p50_ms": base.latency_us["p50"] / 1000,
                         "limited_1k_p50_ms": small.latency_us["p50"] / 1000,
                         "limited_64k_p50_ms": large.latency_us["p50"] / 1000,
                         "limited_64k_p99_ms": large.latency_us["p99"] / 1000,
                         "64k_over_1k_p50": round(large.latency_us["p50"]
                                                  / max(small.latency_us["p50"], 1), 2)})
    assert large.requests == 10, large.status_counts
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="limited-1k"),
        ErrorRateAtMost(0.0, load="limited-64k"),
        StatAtLeast("p50-by-size", "limited_64k_p50_ms", LARGE_S * 1000,
                    label="64 KiB p50 under 1 Mbit/s (ms)"),
        StatAtLeast("p50-by-size", "64k_over_1k_p50", 10.0, label="64 KiB p50 / 1 KiB p50"),
        LatencyPercentileAtMost(50, at_most=LARGE_S * 1000 / 5, load="limited-1k"),
        LatencyPercentileAtMost(50, at_most=LARGE_S * 1000 / 2, load="baseline-64k"),
        StatAtLeast("l2-unsent", L2_UNSENT, 1, label="L2 15006 peak cx_tx_unsent_bytes"),
    )


@pytest.mark.meshlab_lab(overlays=["route-timeout"])
def test_a_route_timeout_fails_large_responses_fast(meshlab_run: Run) -> None:
    """With a 100 ms route timeout, every 64 KiB request ends ``UT`` at L1 and within ~100 ms
    at the client (504, or a truncated 200 when the head came in time); 1 KiB requests still
    succeed."""
    lab = meshlab_run.names
    l1, cluster = lab.pod(L1), lab.outbound_cluster(L2, L2_PORT)
    with meshlab_run.fault(shaped(meshlab_run), max_duration_s=60):
        meshlab_run.load("limited-1k", SMALL_URL, users=2, duration_s=5, max_requests=20)
        large = meshlab_run.load("limited-64k", LARGE_URL, users=2, duration_s=5,
                                 max_requests=20)
    assert large.requests == 20 and set(large.status_counts) <= {"200", "504"}, \
        large.status_counts
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="limited-1k"),
        ResponseFlagsCount(l1, cluster=cluster, flag="UT", at_least=20),
        LatencyPercentileAtMost(100, at_most=ROUTE_TIMEOUT_MS + 150, load="limited-64k"),
    )
