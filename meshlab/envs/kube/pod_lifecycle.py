"""Killing a container or deleting a pod on a cluster, and waiting until it is ready again (the
:class:`~meshlab.envs.capabilities.PodLifecycle` capability of the kube env).

- **A pod** (no container): an API delete with the grace period (``kubectl delete pod
  --grace-period``, Chaos Mesh ``pod-kill``); its StatefulSet creates it again under the same
  name, a Deployment's ReplicaSet creates a replacement under a new name, which the waits and
  status reads that name the deleted pod follow.
- **A container**: its main process — PID 1 of the container's PID namespace — gets SIGTERM,
  then SIGKILL after ``grace_s`` (0: SIGKILL at once), as Chaos Mesh's ``container-kill``.
  The app container is signalled from the pod's debug container, which targets it and so shares
  its process namespace (the app image may have no ``kill``); ``istio-proxy`` (proxyv2 has a
  shell) is signalled from inside. The kubelet restarts it (``restartCount``, CrashLoopBackOff).

``kill_pod`` returns once the cluster shows the kill (the pod terminating or gone, or the
container's restart count grown or the pod not Ready), so a wait for readiness that follows
cannot see the pod before the kill. A dry run prints the calls and waits for nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from meshlab.envs.kube.facade import ClusterApi
from meshlab.envs.kube.ready import workload_of
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.kube.shells import SIDECAR, DebugContainers, app_container
from meshlab.errors import ConfigError, LabError
from meshlab.polling import PollTimeout, wait_until

SIGNAL_EXEC_S = 30.0
"""Seconds an exec that signals a container may take beyond the grace period."""


def container_statuses(pod: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{container: {"restarts", "state", "reason"?, "last_exit"?}}`` of a pod object
    (``status.containerStatuses``; the local lab's shape, :mod:`meshlab.envs.local.pod_status`)."""
    out: dict[str, dict[str, Any]] = {}
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        key = next(iter(state), "unknown")
        entry: dict[str, Any] = {"restarts": int(cs.get("restartCount", 0)), "state": key}
        if (state.get(key) or {}).get("reason"):
            entry["reason"] = state[key]["reason"]
        last = (cs.get("lastState") or {}).get("terminated")
        if last:
            entry["last_exit"] = {"reason": last.get("reason", ""), "code": last.get("exitCode")}
        out[cs["name"]] = entry
    return out


def pod_ready(pod: dict[str, Any] | None) -> bool:
    """Whether a pod object is Ready and not being deleted."""
    if pod is None or pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class KubePodLifecycle:
    """The kube env's pod lifecycle (a mixin of :class:`~meshlab.envs.kube.env.KubeEnv`, which
    provides the attributes below)."""

    api: ClusterApi
    namespace: str
    settings: KubeSettings
    poll_s: float
    _debug: DebugContainers | None
    #: a deleted ReplicaSet pod → (its workload, the workload's pod names before the delete)
    _replaced: dict[str, tuple[str, frozenset[str]]]

    if TYPE_CHECKING:  # pragma: no cover - KubeEnv's
        def _find(self, name: str) -> dict[str, Any]: ...
        def _pod_objects(self) -> list[dict[str, Any]]: ...
        def pod_shell(self, pod: str) -> Any: ...

    def _named(self, name: str) -> dict[str, Any] | None:
        """The pod ``name``, or the replacement of a deleted ReplicaSet pod of that name."""
        pods = self._pod_objects()
        found = next((p for p in pods if p["metadata"]["name"] == name), None)
        if found is None and name in self._replaced:
            workload, before = self._replaced[name]
            found = next((p for p in pods if workload_of(p) == workload
                          and p["metadata"]["name"] not in before), None)
        return found

    def kill_pod(self, pod: str, container: str | None, grace_s: float) -> str:
        """Kill ``container`` of ``pod``, or delete the pod (see the module docstring).

        Raises:
            ConfigError: no such pod or container, or a negative ``grace_s``.
            LabError: an API call or exec failed, or the cluster did not show the kill within
                ``settings.ready_timeout_s``.
        """
        if grace_s < 0:
            raise ConfigError(f"grace_s: must be >= 0 seconds, got {grace_s}")
        obj = self._find(pod)
        name, uid = obj["metadata"]["name"], obj["metadata"].get("uid")
        if container is None:
            if any(r.get("kind") == "ReplicaSet" for r in obj["metadata"].get("ownerReferences")
                   or []):
                self._replaced[name] = (workload_of(obj), frozenset(
                    p["metadata"]["name"] for p in self._pod_objects()))
            self.api.delete_pod(self.namespace, name, grace_s)
            self._wait_shown(name, lambda p: p is None or p["metadata"].get("uid") != uid
                             or bool(p["metadata"].get("deletionTimestamp")), "deleted")
            return f"{name}: deleted (grace {grace_s:g} s); its controller creates it again"
        names = [c["name"] for c in obj["spec"]["containers"]]
        if container not in names:
            raise ConfigError(f"container: pod {name} has no container {container!r} "
                              f"(containers: {', '.join(names)})")
        if container not in (SIDECAR, app_container(obj)):
            raise ConfigError(f"container: {container!r} cannot be signalled: the debug "
                              f"container targets {app_container(obj)!r}")
        before = container_statuses(obj).get(container, {}).get("restarts", 0)
        via = container if container == SIDECAR else self._debug_container(name)
        term = f"kill -s TERM 1; sleep {grace_s:g}; kill -s KILL 1 2>/dev/null; true"
        argv = ["kill", "-s", "KILL", "1"] if grace_s == 0 else ["sh", "-c", term]
        res = self.api.exec(self.namespace, name, via, argv, timeout_s=grace_s + SIGNAL_EXEC_S)
        if res.returncode != 0:
            raise LabError(f"pod-kill {name}/{container}: {' '.join(argv)} in {via} exited "
                           f"{res.returncode}: {res.stderr.strip()}")
        self._wait_shown(name, lambda p: not pod_ready(p) or container_statuses(p).get(
            container, {}).get("restarts", 0) > before, f"{container} restarted")
        return f"{name}: killed container {container} (from {via}); the kubelet restarts it"

    def _debug_container(self, name: str) -> str:
        self.pod_shell(name)  # makes the env's DebugContainers on first use
        if self._debug is None:  # pragma: no cover - pod_shell always makes it
            raise LabError(f"pod-kill {name}: no debug containers")
        return self._debug.container(name)

    def _wait_shown(self, name: str, shown: Any, what: str) -> None:
        if self.api.dry_run:
            return
        try:
            wait_until(lambda: self._named(name), shown, timeout_s=self.settings.ready_timeout_s,
                       every_s=self.poll_s, what=f"pod {name} {what}")
        except PollTimeout as exc:
            raise LabError(f"pod-kill: {exc}") from None

    def container_statuses(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {"restarts", "state", ...}}`` as the cluster reports them now."""
        return container_statuses(self._named(pod) or self._find(pod))

    def wait_pod_ready(self, pod: str, timeout_s: float) -> float:
        """Poll until the pod (by name; a deleted one's replacement) is Ready; returns the
        seconds waited (0 in a dry run).

        Raises:
            LabError: not Ready within ``timeout_s``.
        """
        if self.api.dry_run:
            self.api.announce(f"wait until pod {pod} is Ready")
            return 0.0
        start = time.monotonic()
        try:
            wait_until(lambda: self._named(pod), pod_ready, timeout_s=timeout_s,
                       every_s=self.poll_s, what=f"pod {pod} Ready")
        except PollTimeout as exc:
            raise LabError(f"pod {pod} not Ready after {timeout_s:g} s: "
                           f"{container_statuses(exc.last)}") from None
        return time.monotonic() - start
