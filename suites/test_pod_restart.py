"""A pod that dies under load and comes back: the kubelet restarts a killed container
(``restartPolicy: Always``, CrashLoopBackOff) and the StatefulSet recreates a deleted pod;
meanwhile the pod is not ready and leaves the Service's endpoints (kube-proxy and every
sidecar's EDS), as kube-proxy and istiod do.

- **Phenomenon** (base lab, one L2 replica), two kills under one load:

  1. L2's app container is killed (``pod-kill container=main-app``): L2's sidecar still accepts,
     its inbound finds nothing on the app port — ``UF`` at L2's inbound, a 503 to L1 — until the
     kubelet notices at its next relist (≤ 1 s), takes L2 out of the endpoints — ``UH`` (no
     healthy upstream) at L1's outbound, since no replica is left — and restarts the app (restart
     count 1 in the ``containers`` series).
  2. The whole L2 pod is deleted (``pod-kill``, no container): nothing listens on L2's address,
     L1's connects are refused and retried (``UF,URX`` at L1's outbound) until the endpoint goes
     (``UH``); the pod is created again with the same name and the load recovers.

- **Mitigation** (``ha-l2`` + ``ha-l2-timeouts``: two replicas, retries on another host on
  connect failures and gateway errors, ejection after one gateway error): the same two kills of
  L2-0 cost no request.
"""


import pytest

from meshlab import ErrorRateAtMost, PodKill, ResponseFlagsCount, Run, StatAtLeast

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
URL = f"http://{L1}:8070/echo"
RATE_PER_S = 50
STEADY_S = 1.5  # load before and between the kills (an observation window)
LOAD_S = 10.0  # both kills and recoveries (each ~1.5-2 s on this lab) and 2 s after
READY_TIMEOUT_S = 30.0


def kills_under_load(run: Run, name: str) -> dict:
    """Under one load through L1: kill L2-0's app, wait until it is ready again, then delete
    the L2-0 pod and wait again. Returns the container statuses after the first kill."""
    pod = run.names.pod(L2)
    with run.background_load(name, URL, users=8, rate_per_s=RATE_PER_S, duration_s=LOAD_S,
                             timeout_s=10):
        run.sleep(STEADY_S, "load before the first kill")
        with run.fault(PodKill(target=pod, container="main-app",
                               ready_timeout_s=READY_TIMEOUT_S), max_duration_s=60):
            pass  # the revert waits until the kubelet has it ready again
        restarted = run.observe("restarts", "containers", run.container_statuses(pod),
                                pod=pod)
        run.sleep(STEADY_S, "load between the kills")
        with run.fault(PodKill(target=pod, ready_timeout_s=READY_TIMEOUT_S),
                       max_duration_s=60):
            pass
    return restarted


def test_a_killed_pod_fails_requests_until_restarted_and_back_in_endpoints(
        meshlab_run: Run) -> None:
    lab = meshlab_run.names
    l1, l2 = lab.pod(L1), lab.pod(L2)
    outbound = lab.outbound_cluster(L2, L2_PORT)
    restarted = kills_under_load(meshlab_run, "kills")
    meshlab_run.observe("app-restarts", "containers",
                        {"main_app_restarts": restarted["main-app"]["restarts"]}, pod=l2)
    meshlab_run.load("recovered", URL, users=4, rate_per_s=RATE_PER_S, duration_s=2.0,
                     timeout_s=10)
    meshlab_run.check(
        ResponseFlagsCount(l2, cluster=lab.inbound_cluster(L2_PORT), flag="UF", at_least=1),
        ResponseFlagsCount(l1, cluster=outbound, flag="URX", at_least=1),
        ResponseFlagsCount(l1, cluster=outbound, flag="UF", at_least=1),
        ResponseFlagsCount(l1, cluster=outbound, flag="UH", at_least=1),
        StatAtLeast("app-restarts", "main_app_restarts", 1,
                    label="L2's app restarted by the kubelet"),
        ErrorRateAtMost(0.0, load="recovered"),
    )


@pytest.mark.meshlab_lab(overlays=["ha-l2", "ha-l2-timeouts"])
def test_retries_on_another_replica_and_ejection_hide_a_pod_restart(meshlab_run: Run) -> None:
    kills_under_load(meshlab_run, "mitigated")
    meshlab_run.check(ErrorRateAtMost(0.0, load="mitigated"))
