"""The run the kill -9 harness (:mod:`kill9_harness`) kills: not collected by ``pytest tests``
(no ``test_`` prefix); the harness runs it with ``meshlab run`` on its own lab.

It passes through every phase the harness aims at, in order: the lab comes ``up`` (the plugin's
lab pool), the collectors start (the run opens), a warm-up load starts, three faults that leave
three kinds of state are injected together — an iptables chain (``packet-drop``), a tbf qdisc
(``bandwidth``) and a container cgroup limit (``cpu-limit``) — under a background load, they are
reverted once the load ends, and the report is written (the run closes).
"""

from meshlab import Bandwidth, CpuLimit, ErrorRateAtMost, PacketDrop, Run

L1, L2 = "fortio-server", "fortio-server-l2"
URL = f"http://{L1}:8070/echo?size=100"
FAULT_S = 3
RATE_PER_S = 40


def test_scenario(meshlab_run: Run) -> None:
    """Warm-up, then three faults at once under 40 req/s for 3 s, reverted; errors bounded."""
    lab = meshlab_run.names
    l1, l2 = lab.pod(L1), lab.pod(L2)
    meshlab_run.load("warm-up", URL, users=2, duration_s=2, max_requests=20)
    drop = PacketDrop(target=l1, peer_pod=l2, probability=0.05, direction="both")
    shape = Bandwidth(target=l2, rate_mbit=50.0)
    limit = CpuLimit(target=l2, container="istio-proxy", cpu_m=500)
    with (meshlab_run.fault(drop, max_duration_s=60),
          meshlab_run.fault(shape, max_duration_s=60),
          meshlab_run.fault(limit, max_duration_s=60)):
        meshlab_run.load("faulted", URL, users=4, rate_per_s=RATE_PER_S, duration_s=FAULT_S,
                         max_requests=RATE_PER_S * FAULT_S, timeout_s=10)
    meshlab_run.check(ErrorRateAtMost(0.5, load="faulted"))
