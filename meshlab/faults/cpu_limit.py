"""``cpu-limit``: change a container's CPU limit live — e.g. throttle the sidecar to ``100m``
(Kubernetes in-place pod resize of ``resources.limits.cpu``; the kubelet writes the CFS quota).

A limit of ``m`` millicores is a CFS quota of ``m`` × 100 µs per 100 ms period: once the
container's processes have used it, they wait for the next period (``nr_throttled`` and
``throttled_time`` grow). That shows as latency with a period-sized step, mostly in the tail:
a request that arrives after the quota is spent waits up to the rest of the period. The limit
that was there before (None: unlimited) is kept in ``previous_m`` — a dataclass field, so the
deadman's fresh instance restores it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.envs.base import Env
from meshlab.faults.container_target import check_container, container_env, resolve
from meshlab.faults.targets import param_error, require_target

NAME = "cpu-limit"


@dataclass
class CpuLimit:
    """Set a container's CPU limit until revert.

    Args:
        target: pod or workload name.
        cpu_m: the new limit in millicores (1000 = one CPU), >= 1.
        container: container name (``istio-proxy`` for the sidecar); None: the pod's first app
            container.
        saved: filled by inject: whether ``previous_m`` holds the limit to restore.
        previous_m: filled by inject: the limit before it, in millicores (None: unlimited).

    Raises:
        ConfigError: a bad parameter (the message names the field), or an env that cannot act
            on single containers.
    """

    target: str
    cpu_m: int
    container: str | None = None
    saved: bool = False
    previous_m: int | None = None
    name = NAME

    def __post_init__(self) -> None:
        require_target(NAME, self.target)
        if isinstance(self.cpu_m, bool) or not isinstance(self.cpu_m, int) or self.cpu_m < 1:
            raise param_error(NAME, "cpu_m", f"must be a whole number of millicores >= 1 "
                                             f"(1m is the smallest CPU unit), got {self.cpu_m!r}")
        check_container(NAME, self.container)

    def inject(self, env: Env) -> str:
        """Save the current limit (first inject only) and set ``cpu_m``.

        Raises:
            ConfigError: unknown pod or container. LabError: no cgroups, or the kernel refused.
        """
        pod, container = resolve(env, NAME, self.target, self.container)
        envc = container_env(env, NAME)
        self.container = container
        if not self.saved:
            self.previous_m = envc.container_cpu_limit(pod, container)
            self.saved = True
        return envc.set_container_cpu_limit(pod, container, self.cpu_m) + (
            f" (was {'none' if self.previous_m is None else f'{self.previous_m}m'})")

    def revert(self, env: Env) -> str:
        """Restore the saved limit (idempotent; nothing saved: nothing to do)."""
        if not self.saved:
            return f"{self.target}: cpu limit not changed"
        pod, container = resolve(env, NAME, self.target, self.container)
        return container_env(env, NAME).set_container_cpu_limit(pod, container, self.previous_m)
