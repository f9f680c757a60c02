"""Where a fault acts: a pod's or a node's network namespace, named by the user.

Local lab: the argv runs in the target's netns (``ip netns exec``). Cluster: a pod target runs
it in the pod's netns through a debug container with NET_ADMIN (e.g. ``kubectl debug
--profile=netadmin`` with netshoot); a node target runs it over SSH with ``nsenter -t 1 -n``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from meshlab.envs.base import Env
from meshlab.errors import ConfigError

T = TypeVar("T")


def target_shell(env: Env, target: str, fault: str) -> Any:
    """The Shell of ``target``: a pod (or workload) name first, else a node name.

    Args:
        env: the env.
        target: pod, workload or node name.
        fault: the fault's registry key (for the error message).

    Raises:
        ConfigError: neither a pod nor a node of the lab.
    """
    try:
        return env.pod_shell(target)
    except ConfigError:
        pass
    try:
        return env.node_shell(target)
    except ConfigError:
        raise ConfigError(f"{fault}: target: {target!r} is neither a pod nor a node "
                          f"of the lab") from None


def param_error(fault: str, field: str, why: str) -> ConfigError:
    """The error for a bad fault parameter: ``<fault>: <field>: <why>``."""
    return ConfigError(f"{fault}: {field}: {why}")


def require_target(fault: str, target: str) -> None:
    """Check that a target is named.

    Raises:
        ConfigError: ``target`` is empty.
    """
    if not target:
        raise param_error(fault, "target", "must name a pod or a node")


def capable(env: Env, capability: type[T], fault: str, needs: str) -> T:
    """``env`` as an env with ``capability`` (a runtime-checkable Protocol of
    :mod:`meshlab.envs.base`).

    Args:
        env: the env.
        capability: e.g. :class:`~meshlab.envs.base.PodLifecycle`.
        fault: the fault's registry key (for the message).
        needs: what the fault needs and the env lacks, e.g. ``"cannot kill pods (…)"``.

    Raises:
        ConfigError: ``<fault>: the <env> env <needs>``.
    """
    if not isinstance(env, capability):
        raise ConfigError(f"{fault}: the {env.name} env {needs}")
    return env
