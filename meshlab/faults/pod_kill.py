"""``pod-kill``: kill one container of a pod, or delete the whole pod (Chaos Mesh PodChaos
``pod-kill``/``container-kill``, Litmus ``pod-delete``).

The kubelet undoes it, as in a cluster: a killed container is restarted under
``restartPolicy: Always`` with CrashLoopBackOff timing, a deleted pod is created again with the
same name by its StatefulSet (restart counts back to 0). In between the pod is not ready and
leaves its Services' endpoints — kube-proxy's rules and every sidecar's EDS — at the kubelet's
next relist. So callers first see the dead process (``UF``: connection refused, retried as
``URX``), then no endpoint at all for a single replica (``UH``), then recovery.

The revert has nothing to undo: it waits until the pod is ready again and reports the restart
counts and how long the pod took to come back (from the kill when this instance made it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from meshlab.envs.base import Env
from meshlab.envs.capabilities import PodLifecycle
from meshlab.errors import ConfigError
from meshlab.faults.container_target import check_container
from meshlab.faults.targets import capable, param_error, require_target

NAME = "pod-kill"


@dataclass
class PodKill:
    """Kill a container, or delete a pod; the revert waits for it to be ready again.

    Args:
        target: pod or workload name (a workload: its first replica).
        container: the container to kill (``istio-proxy`` for the sidecar); None: delete the
            whole pod.
        grace_s: seconds between SIGTERM and SIGKILL (0: SIGKILL at once, Chaos Mesh's
            ``gracePeriod: 0``).
        ready_timeout_s: how long the revert waits for the pod to be ready again.
        killed_at: filled by inject: epoch seconds of the kill.
        killed_pod: filled by inject: the pod's name (a deleted pod is not listed until its
            replacement exists).

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    container: str | None = None
    grace_s: float = 0.0
    ready_timeout_s: float = 120.0
    killed_at: float = 0.0
    killed_pod: str = ""
    name = NAME

    def __post_init__(self) -> None:
        require_target(NAME, self.target)
        check_container(NAME, self.container)
        for field, value in (("grace_s", self.grace_s), ("ready_timeout_s",
                                                          self.ready_timeout_s)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise param_error(NAME, field, f"must be a number of seconds >= 0, got {value!r}")

    @staticmethod
    def _env(env: Env) -> PodLifecycle:
        return capable(env, PodLifecycle, NAME, "cannot kill pods (needs a kubelet: the local "
                                                "lab's, or a cluster's)")

    def inject(self, env: Env) -> str:
        """Kill the container, or delete the pod.

        Raises:
            ConfigError: unknown pod or container. LabError: the lab is not up.
        """
        lifecycle = self._env(env)
        try:
            pod = env.pod(self.target).name
        except ConfigError as exc:
            raise param_error(NAME, "target", str(exc)) from None
        self.killed_at, self.killed_pod = time.time(), pod
        try:
            return lifecycle.kill_pod(pod, self.container, float(self.grace_s))
        except ConfigError as exc:
            raise param_error(NAME, "container", str(exc)) from None

    def revert(self, env: Env) -> str:
        """Wait until the pod is ready again; report its restarts and recovery time.

        Raises:
            LabError: not ready within ``ready_timeout_s``.
        """
        lifecycle = self._env(env)
        pod = self.killed_pod or env.pod(self.target).name
        waited_s = lifecycle.wait_pod_ready(pod, float(self.ready_timeout_s))
        since = (f"{time.time() - self.killed_at:.2f} s after the kill" if self.killed_at
                 else f"after {waited_s:.2f} s")
        restarts = {c: s.get("restarts", 0) for c, s in lifecycle.container_statuses(pod).items()}
        return f"{pod}: ready again {since}; restarts {restarts}"
