"""50 % random packet drop on the L1→L2 hop (book: "TCP 底层监控指标", DESIGN.md §5.2).

The book's rule ``iptables -I INPUT --src <upstream> -m statistic --mode random --probability
0.5 -j DROP`` runs on the proxy's host; here ``PacketDrop(target=L1, peer_pod=L2,
direction="both")`` puts it (and its OUTPUT twin) in L1's netns, so only the L1-sidecar ↔ L2
packets are hit (netshoot→L1 and every loopback hop inside the pods are not). One test measures
a fixed-rate baseline through both hops, then runs the same load under the fault while the two
sidecars' ``/stats`` are polled (their ``tcp_stats`` read ``TCP_INFO`` once a second, so the
gauges are only visible while the fault is active), and asserts with numbers:

- L1's ``cluster.outbound|8080||fortio-server-l2…;.tcp_stats.cx_tx_retransmitted_segments``
  grows: L2's responses and ACKs are dropped on L1's INPUT (wire-like loss for L1's socket), so
  L1's requests go unacknowledged and are retransmitted;
- L1's ``cx_tx_unacked_segments`` is non-zero at some sample (a request waiting for its ACK);
- L1's ``cx_tx_unsent_bytes`` is non-zero at some sample: a request dropped on L1's OUTPUT is a
  *local* drop, ``ip_local_out`` returns ``-EPERM`` to TCP, so the segment is not counted as
  sent and waits in the socket (``tcpi_notsent_bytes``) for the probe timer; no retransmission
  is counted for it (``tcp_write_xmit`` / ``tcp_retransmit_skb`` in net/ipv4/tcp_output.c);
- L2's ``listener.0.0.0.0_15006.tcp_stats.cx_tx_retransmitted_segments`` grows (its 4 KiB
  responses are lost on the way);
- p99 rises: at least TCP_RTO_MIN (200 ms) and at least twice the baseline p99.

Fortio's ``-M`` proxy in L1 gives up after its 3 s ``-timeout`` and answers 503 (L1's outbound
logs ``DC``); the client's timeout (10 s) is longer, so retransmission delays show as latency
or as those 503s, never as client errors. Both loads are bounded by count and time.
"""

from meshlab import ErrorRateAtMost, PacketDrop, Run, StatAtLeast, TpsAtLeast
from meshlab.collectors.envoy_stats import (
    StatsPoller,
    cluster_tcp_stat,
    delta,
    listener_tcp_stat,
    snapshot,
)

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
URL = f"http://{L1}:8070/echo?size=4096"
USERS = 8
RATE_PER_S = 40
BASELINE_S = 5
DROP_S = 10
CLIENT_TIMEOUT_S = 10  # > fortio's 3 s -M deadline: a slow request is latency or a 503
TCP_RTO_MIN_MS = 200  # include/net/tcp.h: no retransmission comes sooner

L2_RETRANS = listener_tcp_stat(15006, "cx_tx_retransmitted_segments")
L2_UNACKED = listener_tcp_stat(15006, "cx_tx_unacked_segments")
L2_UNSENT = listener_tcp_stat(15006, "cx_tx_unsent_bytes")


def counters(values: dict[str, int], *names: str) -> dict[str, int]:
    """The named stats of a snapshot or delta (0 when absent)."""
    return {name: values.get(name, 0) for name in names}


def test_half_the_packets_of_l1_to_l2_dropped(meshlab_run: Run) -> None:
    """Baseline, then 50 % drop on L1↔L2 under the same load: retransmissions, non-zero
    unacked/unsent gauges on L1's L2 cluster, retransmissions at L2, p99 up."""
    env, lab = meshlab_run.env, meshlab_run.names
    l1, l2, l2_cluster = lab.pod(L1), lab.pod(L2), lab.outbound_cluster(L2, L2_PORT)
    l1_retrans, l1_unacked, l1_unsent = (cluster_tcp_stat(l2_cluster, stat) for stat in (
        "cx_tx_retransmitted_segments", "cx_tx_unacked_segments", "cx_tx_unsent_bytes"))
    meshlab_run.load("warm-up", URL, users=USERS, duration_s=2, max_requests=2 * USERS)
    start_l1 = snapshot(env, l1)
    baseline = meshlab_run.load("baseline", URL, users=USERS, rate_per_s=RATE_PER_S,
                                duration_s=BASELINE_S, max_requests=RATE_PER_S * BASELINE_S,
                                timeout_s=CLIENT_TIMEOUT_S)
    before_l1, before_l2 = snapshot(env, l1), snapshot(env, l2)
    base_retrans = meshlab_run.observe(
        "l1-tcp-stats-baseline", "tcp_stats_delta",
        counters(delta(start_l1, before_l1), l1_retrans), pod=l1)[l1_retrans]

    fault = PacketDrop(target=l1, peer_pod=l2, probability=0.5, direction="both")
    with (meshlab_run.fault(fault, max_duration_s=60),
          StatsPoller(env, l1) as l1_poll, StatsPoller(env, l2) as l2_poll):
        drop = meshlab_run.load("drop-50", URL, users=USERS, rate_per_s=RATE_PER_S,
                                duration_s=DROP_S, max_requests=RATE_PER_S * DROP_S,
                                timeout_s=CLIENT_TIMEOUT_S)
    meshlab_run.observe("l1-tcp-stats-drop", "tcp_stats_delta",
                        counters(delta(before_l1, snapshot(env, l1)), l1_retrans), pod=l1)
    meshlab_run.observe("l2-tcp-stats-drop", "tcp_stats_delta",
                        counters(delta(before_l2, snapshot(env, l2)), L2_RETRANS), pod=l2)
    for pod, poll, names in ((l1, l1_poll, (l1_unacked, l1_unsent)),
                             (l2, l2_poll, (L2_UNACKED, L2_UNSENT))):
        meshlab_run.observe(f"{'l1' if pod == l1 else 'l2'}-tcp-gauges-drop", "envoy_stats",
                            poll.max_values(list(names)), pod=pod, reduce="max",
                            samples=len(poll.samples), interval_s=poll.interval_s,
                            nonzero_samples={n: poll.nonzero_samples(n) for n in names},
                            errors=poll.errors[:5])
    base_p99_ms = baseline.latency_us["p99"] / 1000
    drop_p99_ms = drop.latency_us["p99"] / 1000
    meshlab_run.observe("p99-vs-baseline", "latency_compare",
                        {"baseline_p99_ms": base_p99_ms, "drop_p99_ms": drop_p99_ms,
                         "p99_ratio": round(drop_p99_ms / base_p99_ms, 2)})

    assert drop.requests > 0 and drop.status_counts.get("200", 0) > 0, drop.status_counts
    assert set(drop.status_counts) <= {"200", "503"}, drop.status_counts  # no client errors
    meshlab_run.check(
        TpsAtLeast(0.9 * RATE_PER_S, load="baseline"),
        ErrorRateAtMost(0.0, load="baseline"),
        StatAtLeast("l1-tcp-stats-drop", l1_retrans, base_retrans + 10,
                    label="L1→L2 cx_tx_retransmitted_segments"),
        StatAtLeast("l1-tcp-gauges-drop", l1_unacked, 1,
                    label="L1→L2 peak cx_tx_unacked_segments"),
        StatAtLeast("l1-tcp-gauges-drop", l1_unsent, 1, label="L1→L2 peak cx_tx_unsent_bytes"),
        StatAtLeast("l2-tcp-stats-drop", L2_RETRANS, 20,
                    label="L2 15006 cx_tx_retransmitted_segments"),
        StatAtLeast("p99-vs-baseline", "drop_p99_ms", TCP_RTO_MIN_MS, label="p99 under drop (ms)"),
        StatAtLeast("p99-vs-baseline", "p99_ratio", 2.0, label="p99 under drop / baseline p99"),
    )
