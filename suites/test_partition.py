"""A network partition between L1's node and the node of one L2 replica, under load
(``network-partition``: packets between the two nodes vanish both ways, no RST).

- **Phenomenon** (overlay ``ha-l2``: L2-0 and L2-1 on different nodes): requests that L1's
  sidecar sends on connections to the cut replica stall — no answer, no reset — until L1's app
  gives up (fortio ``-timeout`` 3 s), so L1's outbound logs ``DC``; L1's ``tcp_stats`` count the
  retransmissions toward L2; once the partition heals, a load has no errors.
- **Mitigation** (``ha-l2-timeouts``: per-try timeout + retries on another replica, connect
  timeout, outlier ejection, TCP keepalive): no client error and every request within 1.5 s
  while the partition lasts.
"""


import pytest

from meshlab import (
    ErrorRateAtMost,
    LatencyPercentileAtMost,
    NetworkPartition,
    ResponseFlagsCount,
    Run,
    StatAtLeast,
)
from meshlab.collectors.envoy_stats import cluster_tcp_stat, delta, snapshot

pytestmark = pytest.mark.meshlab_lab(overlays=["ha-l2"])
MITIGATED = pytest.mark.meshlab_lab(overlays=["ha-l2", "ha-l2-timeouts"])

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
CUT_REPLICA = 1  # fortio-server-l2-1: its node is cut off from L1's
URL = f"http://{L1}:8070/echo"
RATE_PER_S = 40
STEADY_S = 3.0  # load before the partition (an observation window, not synchronisation)
PARTITION_S = 6.0  # how long the partition lasts
MITIGATED_MAX_MS = 1500


def partition_under_load(run: Run, name: str) -> dict:
    """Load through L1; after STEADY_S, L1's node and the cut replica's node are partitioned
    for PARTITION_S; the load runs on for 3 s after the heal. Returns the load's record."""
    lab = run.names
    l1_node = run.pod(lab.pod(L1)).node
    cut_node = run.pod(lab.pod(L2, CUT_REPLICA)).node
    assert l1_node != cut_node, (l1_node, cut_node)
    fault = NetworkPartition(side_a=[l1_node], side_b=[cut_node])
    with run.background_load(name, URL, users=8, rate_per_s=RATE_PER_S,
                             duration_s=STEADY_S + PARTITION_S + 3, timeout_s=10):
        run.sleep(STEADY_S, "steady state before the partition")
        with run.fault(fault, max_duration_s=60):
            run.sleep(PARTITION_S, "the partition lasts PARTITION_S")
    return run.load_record(name)


def test_partition_stalls_connections_and_l1_logs_dc(meshlab_run: Run) -> None:
    lab = meshlab_run.names
    l1, cluster = lab.pod(L1), lab.outbound_cluster(L2, L2_PORT)
    retrans = cluster_tcp_stat(cluster, "cx_tx_retransmitted_segments")
    before = snapshot(meshlab_run.env, l1)
    partition_under_load(meshlab_run, "partition")
    meshlab_run.observe("l1-retransmits", "tcp_stats_delta",
                        {retrans: delta(before, snapshot(meshlab_run.env, l1)).get(retrans, 0)},
                        pod=l1)
    meshlab_run.check(
        ResponseFlagsCount(l1, cluster=cluster, flag="DC", at_least=1),
        StatAtLeast("l1-retransmits", retrans, 1, label="L1→L2 cx_tx_retransmitted_segments"),
    )
    meshlab_run.load("after-heal", URL, users=4, rate_per_s=RATE_PER_S, duration_s=2)
    meshlab_run.check(ErrorRateAtMost(0.0, load="after-heal"))


@MITIGATED
def test_timeouts_and_ejection_bound_the_partition(meshlab_run: Run) -> None:
    partition_under_load(meshlab_run, "mitigated")
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="mitigated"),
        LatencyPercentileAtMost(100, at_most=MITIGATED_MAX_MS, load="mitigated"),
    )
