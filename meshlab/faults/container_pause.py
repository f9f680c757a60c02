"""``container-pause``: freeze one container of a pod — the stuck-app, GC-pause, debugger-attached
case (Chaos Mesh PodChaos ``container-pause`` semantics via the freezer, ``docker pause``).

Every process of the container stops at once through its freezer cgroup (v1
``freezer.state=FROZEN``, v2 ``cgroup.freeze=1``; SIGSTOP where there is no freezer,
:mod:`meshlab.envs.local.containers`). Its sockets stay open: the kernel still completes TCP
handshakes into the listen backlog and acknowledges data into the receive buffer, but nothing is
read or answered — callers see requests hang until *their* timeouts, not resets. Revert thaws it;
the requests that waited are then served.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.envs.base import Env
from meshlab.faults.container_target import check_container, container_env, resolve
from meshlab.faults.targets import require_target

NAME = "container-pause"


@dataclass
class ContainerPause:
    """Pause one container until revert.

    Args:
        target: pod or workload name.
        container: container name (``istio-proxy`` for the sidecar); None: the pod's first app
            container.

    Raises:
        ConfigError: a bad parameter (the message names the field), or an env that cannot act
            on single containers.
    """

    target: str
    container: str | None = None
    name = NAME

    def __post_init__(self) -> None:
        require_target(NAME, self.target)
        check_container(NAME, self.container)

    def inject(self, env: Env) -> str:
        """Freeze the container (see the module docstring).

        Raises:
            ConfigError: unknown pod or container. LabError: it could not be frozen.
        """
        pod, container = resolve(env, NAME, self.target, self.container)
        self.container = container  # a fresh instance (deadman) thaws the same one
        return container_env(env, NAME).pause_container(pod, container)

    def revert(self, env: Env) -> str:
        """Thaw the container (idempotent)."""
        pod, container = resolve(env, NAME, self.target, self.container)
        return container_env(env, NAME).resume_container(pod, container)
