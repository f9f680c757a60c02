"""Which container a container fault acts on: a pod (or workload) name plus a container name,
on an env with the :class:`~meshlab.envs.capabilities.Containers` capability (the local lab's
container cgroups). ``istio-proxy`` is the sidecar; no container name means the pod's first
app container (the manifest's first, as ``kubectl exec`` defaults to it).
"""

from __future__ import annotations

from meshlab.envs.base import Env
from meshlab.envs.capabilities import Containers
from meshlab.errors import ConfigError
from meshlab.faults.targets import capable, param_error

SIDECAR = "istio-proxy"


def check_container(fault: str, container: object) -> None:
    """Validate a container fault's ``container`` field (None, or a non-empty name).

    Raises:
        ConfigError: ``<fault>: container: …``.
    """
    if container is not None and (not isinstance(container, str) or not container):
        raise param_error(fault, "container", f"must be a container name, got {container!r}")


def container_env(env: Env, fault: str) -> Containers:
    """``env`` as a :class:`Containers` env.

    Raises:
        ConfigError: the env cannot act on single containers (names the fault and the env).
    """
    return capable(env, Containers, fault, "cannot act on single containers (needs container "
                                           "cgroups: the local lab)")


def resolve(env: Env, fault: str, target: str, container: str | None) -> tuple[str, str]:
    """``(pod name, container name)`` for ``target``/``container``.

    Raises:
        ConfigError: no such pod, or no such container (names the field and what exists).
    """
    envc = container_env(env, fault)
    try:
        pod = env.pod(target).name
    except ConfigError as exc:
        raise param_error(fault, "target", str(exc)) from None
    names = envc.containers(pod)
    if container is None:
        apps = [n for n in names if n != SIDECAR]
        if not apps:
            raise param_error(fault, "container", f"pod {pod} runs no app container")
        return pod, apps[0]
    if container not in names:
        raise param_error(fault, "container", f"pod {pod} has no container {container!r} "
                                              f"(containers: {', '.join(names)})")
    return pod, container
