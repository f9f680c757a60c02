"""A live VirtualService fault on L2 (``http-fault``: 50 % of requests aborted with 503 and every
request delayed 100 ms, pushed to the running sidecars as istiod does — no restart).

- Istio programs the fault on the *calling* side: L1's outbound to L2 logs ``FI`` for the
  aborted requests (L2 never sees them) and ``DI`` for the delayed ones; the client sees the
  503s through L1's app.
- The fault is in effect only inside its window: no ``FI``/``DI`` record ends before the push
  or after the revert (one request's time of slack each side), and a load after the revert has
  no error.

Measured here (40 req/s; the window is 4.8 s with the push and the revert, each applied by every
sidecar within about a second): 181 requests ``DI``, 89 of them (49 %) also ``FI`` with 503;
the load's p50 101 ms; 0 records outside the window; the load after it 80/80 answered.
"""

import time

from meshlab import ErrorRateAtMost, HttpFault, Run, StatAtLeast, StatAtMost
from meshlab.collectors.accesslog import end_second

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
URL = f"http://{L1}:8070/echo"
RATE_PER_S = 40
STEADY_S = 3.0  # load before the push (an observation window, not synchronisation)
FAULT_S = 3.0
SLACK_S = 1.0  # a record's end second vs the window: one request's time plus rounding


def test_a_live_abort_and_delay_show_as_fi_di_only_inside_their_window(
        meshlab_run: Run) -> None:
    lab = meshlab_run.names
    l1, cluster = lab.pod(L1), lab.outbound_cluster(L2, L2_PORT)
    fault = HttpFault(host=L2, abort_http_status=503, abort_pct=50, delay_ms=100)
    with meshlab_run.background_load("live-fault", URL, users=8, rate_per_s=RATE_PER_S,
                                     duration_s=STEADY_S + FAULT_S + 3, timeout_s=10,
                                     mode="open-loop"):
        meshlab_run.sleep(STEADY_S, "steady state before the push")
        pushed_at = time.time()
        with meshlab_run.fault(fault, max_duration_s=60):
            meshlab_run.sleep(FAULT_S, "the fault's window")
        reverted_at = time.time()
    meshlab_run.load("after", URL, users=4, rate_per_s=RATE_PER_S, duration_s=2)
    faulted = [(r, set(str(r.get("response_flags")).split(",")) & {"FI", "DI"})
               for r in meshlab_run.records(l1) if r.get("upstream_cluster") == cluster]
    faulted = [(r, flags) for r, flags in faulted if flags]
    outside = [r for r, _ in faulted if not (pushed_at - SLACK_S <= (end_second(r) or 0)
                                             <= reverted_at + SLACK_S)]
    meshlab_run.observe("fault-window", "http_fault", {
        "aborted": sum(1 for _, flags in faulted if "FI" in flags),
        "delayed": sum(1 for _, flags in faulted if "DI" in flags),
        "aborted_503": sum(1 for r, flags in faulted if "FI" in flags
                           and r.get("response_code") == 503),
        "outside_window": len(outside), "window_s": round(reverted_at - pushed_at, 3),
        "abort_share": round(sum(1 for _, f in faulted if "FI" in f) / max(len(faulted), 1), 3)},
        pod=l1)
    meshlab_run.check(
        StatAtLeast("fault-window", "delayed", 0.8 * RATE_PER_S * FAULT_S,
                    label="DI records (every request of the window)"),
        StatAtLeast("fault-window", "abort_share", 0.3, label="share of DI requests aborted "
                                                              "(asked 50 %)"),
        StatAtMost("fault-window", "abort_share", 0.7, label="share of DI requests aborted "
                                                             "(asked 50 %)"),
        StatAtMost("fault-window", "outside_window", 0, label="FI/DI records outside the window"),
        StatAtLeast("fault-window", "aborted_503", 0.3 * RATE_PER_S * FAULT_S,
                    label="FI records answered 503"),
        ErrorRateAtMost(0.0, load="after"),
    )
