"""A stuck app behind a healthy sidecar: L2's app container is paused (``container-pause``:
the freezer stops every process at once, its sockets stay open — a GC pause, a deadlock, a
debugger).

- **Phenomenon** (base lab): L2's sidecar still accepts and forwards, but nothing answers; the
  requests hang on open connections until L1's app gives up (fortio ``-timeout`` 3 s) and closes
  its side, so L1's outbound logs ``DC``, and L1's sidecar keeps opening connections to L2 for
  the requests piling up behind the stuck ones (``upstream_cx_active`` toward L2 climbs). No RST
  anywhere: the kernel completes every handshake into the frozen listener's backlog.
- **Mitigation** (``ha-l2`` + ``ha-l2-timeouts``: per-try timeout 500 ms with retries on another
  replica, ejection after one gateway error): L2-0's app paused, L2-1 healthy — every request
  answered, p100 under per-try timeout + backoff + L2-1's latency.
"""


import pytest

from meshlab import (
    ContainerPause,
    ErrorRateAtMost,
    LatencyPercentileAtMost,
    ResponseFlagsCount,
    Run,
    StatAtLeast,
)
from meshlab.collectors.envoy_stats import StatsPoller

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
URL = f"http://{L1}:8070/echo"
RATE_PER_S = 20
STEADY_S = 2.0  # load before the pause (an observation window, not synchronisation)
PAUSE_S = 4.0  # longer than L1's 3 s app timeout, so stuck requests end as DC
PER_TRY_TIMEOUT_MS = 500  # overlay ha-l2-timeouts
APP_TIMEOUT_MS = 3000  # L1's fortio -M gives up after -timeout 3 s


def paused_under_load(run: Run, name: str, replica: int = 0) -> None:
    """Load through L1; after STEADY_S, L2-<replica>'s app is paused for PAUSE_S; the load runs
    on for 2 s after the thaw."""
    fault = ContainerPause(target=run.names.pod(L2, replica), container="main-app")
    with run.background_load(name, URL, users=8, rate_per_s=RATE_PER_S,
                             duration_s=STEADY_S + PAUSE_S + 2, timeout_s=10):
        run.sleep(STEADY_S, "load before the pause")
        with run.fault(fault, max_duration_s=60):
            run.sleep(PAUSE_S, "the app stays paused PAUSE_S")


def test_a_paused_app_hangs_requests_until_the_callers_timeout(meshlab_run: Run) -> None:
    lab = meshlab_run.names
    l1, cluster = lab.pod(L1), lab.outbound_cluster(L2, L2_PORT)
    cx_active = f"cluster.{cluster};.upstream_cx_active"
    with StatsPoller(meshlab_run.env, l1, filter_regex="upstream_cx_active",
                     interval_s=0.5) as poll:
        paused_under_load(meshlab_run, "paused")
    p99_ms = meshlab_run.load_record("paused")["latency_us"]["p99"] / 1000
    meshlab_run.observe("p99", "latency", {"paused_p99_ms": p99_ms})
    meshlab_run.observe("l1-cx-active", "envoy_stats", poll.max_values([cx_active]), pod=l1,
                        reduce="max", samples=len(poll.samples), errors=poll.errors[:5])
    meshlab_run.check(
        ResponseFlagsCount(l1, cluster=cluster, flag="DC", at_least=5),
        StatAtLeast("l1-cx-active", cx_active, 5, label="L1→L2 peak upstream_cx_active"),
        StatAtLeast("p99", "paused_p99_ms", 0.9 * APP_TIMEOUT_MS,
                    label="p99 (ms): stuck requests wait for L1's app timeout"),
    )


@pytest.mark.meshlab_lab(overlays=["ha-l2", "ha-l2-timeouts"])
def test_per_try_timeout_and_ejection_bound_a_stuck_replica(meshlab_run: Run) -> None:
    paused_under_load(meshlab_run, "mitigated")
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="mitigated"),
        LatencyPercentileAtMost(100, at_most=PER_TRY_TIMEOUT_MS + 250, load="mitigated"),
    )
