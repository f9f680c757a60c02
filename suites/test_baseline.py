"""Steady state of the layered lab (the book's 简单分层实验环境).

netshoot → fortio-server (L1 sidecar inbound → app's -M proxy on 8070 → L1 sidecar outbound)
→ fortio-server-l2 (L2 sidecar inbound → app echo on 8080). With no fault, the mesh must carry
a fixed-rate load with no errors, a low p99, and no response flag on any hop.
"""

from meshlab import (
    ErrorRateAtMost,
    LatencyPercentileAtMost,
    OnlyResponseFlags,
    ResponseFlagsCount,
    Run,
    TpsAtLeast,
)

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L1_PROXY_PORT, L2_PORT = 8070, 8080  # L1's app proxies (-M) to L2's echo
URL = f"http://{L1}:{L1_PROXY_PORT}/echo?size=100"
RATE_PER_S = 100
DURATION_S = 5
# Each hop of the local lab is a Python process (~1-2 ms per sidecar hop unloaded, 4 hops);
# the bound catches stalls (a 40 ms Nagle/delayed-ACK stall, retries, a blocked event loop)
# while leaving room for a busy 2-core CI machine.
P99_MAX_MS = 100


def test_steady_state_through_both_sidecars(meshlab_run: Run) -> None:
    """Both hops carry 100 req/s for 5 s after a warm-up: TPS ≥ 90 % of the rate, p99 ≤ 100 ms,
    no errors, and every access-log line on both sidecars has flag ``-``."""
    lab = meshlab_run.names
    l1, l2 = lab.pod(L1), lab.pod(L2)
    meshlab_run.load("warm-up", URL, users=4, duration_s=2, max_requests=40)
    load = meshlab_run.load("baseline", URL, users=4, rate_per_s=RATE_PER_S,
                            duration_s=DURATION_S)
    assert load.requests > 0
    meshlab_run.check(
        TpsAtLeast(0.9 * RATE_PER_S, load="baseline"),
        LatencyPercentileAtMost(99, at_most=P99_MAX_MS, load="baseline"),
        ErrorRateAtMost(0.0, load="baseline"),
        OnlyResponseFlags(allowed={"-"}),
        ResponseFlagsCount(l1, cluster=lab.outbound_cluster(L2, L2_PORT), flag="-",
                           at_least=load.requests + 40),
        ResponseFlagsCount(l2, cluster=lab.inbound_cluster(L2_PORT), flag="-",
                           at_least=load.requests + 40),
    )


def test_request_id_is_shared_by_both_hops(meshlab_run: Run) -> None:
    """One request's ``x-request-id`` appears in L1's outbound and L2's inbound log lines."""
    lab = meshlab_run.names
    meshlab_run.load("single", URL, users=1, duration_s=2, max_requests=1)
    l1_out = [r for r in meshlab_run.records(lab.pod(L1))
              if r.get("upstream_cluster") == lab.outbound_cluster(L2, L2_PORT)]
    l2_in = [r for r in meshlab_run.records(lab.pod(L2))
             if r.get("upstream_cluster") == lab.inbound_cluster(L2_PORT)]
    assert len(l1_out) == 1 and len(l2_in) == 1, (l1_out, l2_in)
    assert l1_out[0]["request_id"] and l1_out[0]["request_id"] == l2_in[0]["request_id"]
