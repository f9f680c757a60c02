"""Pod readiness on a cluster: which lab pods are Ready, and why one is not.

A pod is ready when its ``Ready`` condition is ``True`` (kubelet sets it once every container,
the ``istio-proxy`` sidecar included, passes its readiness probe); pods being deleted are not
lab pods at all (:func:`lab_pods`). A pod that is not gets one reason, first match wins, as ``kubectl describe`` would show
it: a container's waiting reason (``ImagePullBackOff: Back-off pulling image …``,
``CrashLoopBackOff``), the scheduler's ``PodScheduled=False`` condition (``Unschedulable: 0/3
nodes are available …``), the pod's last event, else its phase.
"""

from __future__ import annotations

from typing import Any

from meshlab.envs.kube.facade import ClusterApi
from meshlab.errors import LabError
from meshlab.polling import PollTimeout, wait_until


def workload_of(pod: dict[str, Any]) -> str:
    """The StatefulSet/Deployment owning ``pod`` (a ReplicaSet ``<deploy>-<hash>`` owner gives
    ``<deploy>``), else the pod's own name."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "ReplicaSet":
            return str(ref["name"]).rsplit("-", 1)[0]
        if ref.get("kind") in ("StatefulSet", "Deployment"):
            return str(ref["name"])
    return str(pod["metadata"]["name"])


def is_ready(pod: dict[str, Any]) -> bool:
    """The pod's ``Ready`` condition is ``True`` (terminating pods are left out before, by
    :func:`lab_pods`)."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _last_event(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    def when(e: dict[str, Any]) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or
                   (e.get("metadata") or {}).get("creationTimestamp") or "")
    return max(events, key=when) if events else None


def why_not_ready(pod: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """One line saying why ``pod`` is not Ready (see the module docstring for the order)."""
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "PodInitializing",
                                                         "ContainerCreating"):
                return (f"container {cs.get('name')}: {waiting['reason']}: "
                        f"{waiting.get('message') or ''}").rstrip(": ")
            if cs.get("ready") is False and (cs.get("state") or {}).get("running"):
                restarts = cs.get("restartCount") or 0
                last = _last_event(events)
                detail = f"; last event {last.get('reason')}: {last.get('message')}" if last else ""
                return (f"container {cs.get('name')}: running but not ready "
                        f"({restarts} restarts){detail}")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"not scheduled: {cond.get('reason')}: {cond.get('message')}"
    last = _last_event(events)
    if last is not None:
        return f"last event {last.get('reason')}: {last.get('message')}"
    return f"phase {status.get('phase') or 'unknown'}"


def lab_pods(api: ClusterApi, namespace: str, expected: dict[str, int]) -> list[dict[str, Any]]:
    """The namespace's pods of the expected workloads (terminating ones left out)."""
    return [p for p in api.list_pods(namespace) if workload_of(p) in expected
            and not (p.get("metadata") or {}).get("deletionTimestamp")]


def wait_ready(api: ClusterApi, namespace: str, expected: dict[str, int], timeout_s: float,
               poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Poll until every expected workload has its replica count of Ready pods.

    Args:
        api: the cluster facade.
        namespace: the lab namespace.
        expected: workload name → replicas.
        timeout_s: give up after this many seconds.
        poll_s: seconds between polls.

    Returns:
        The lab's pods, all Ready.

    Raises:
        LabError: not ready in time; names the first pod not ready and why, or the workload
            with missing pods and its last event (e.g. a ``FailedCreate`` by admission).
    """
    def poll() -> tuple[list[dict[str, Any]], dict[str, int]]:
        pods = lab_pods(api, namespace, expected)
        counts = {w: 0 for w in expected}
        for p in pods:
            counts[workload_of(p)] += is_ready(p)
        return pods, counts

    try:
        return wait_until(poll, lambda pc: all(pc[1][w] >= n for w, n in expected.items()),
                          timeout_s=timeout_s, every_s=poll_s,
                          what=f"lab pods of {namespace} Ready")[0]
    except PollTimeout as exc:
        pods, counts = exc.last
    for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if not is_ready(p):
            name = p["metadata"]["name"]
            reason = why_not_ready(p, api.list_events(namespace, name))
            raise LabError(f"pod {namespace}/{name} not Ready after {timeout_s:g} s: {reason}")
    missing = next(w for w, n in expected.items() if counts[w] < n)
    last = _last_event(api.list_events(namespace, missing))
    detail = f"last event {last.get('reason')}: {last.get('message')}" if last else "no events"
    raise LabError(f"workload {namespace}/{missing} has {counts[missing]} of "
                   f"{expected[missing]} pods Ready after {timeout_s:g} s: {detail}")
