"""Where a fault acts: a pod's or a node's network namespace, named by the user.

Local lab: the argv runs in the target's netns (``ip netns exec``). Cluster: a pod target runs
it in the pod's netns through a debug container with NET_ADMIN (e.g. ``kubectl debug
--profile=netadmin`` with netshoot); a node target runs it over SSH with ``nsenter -t 1 -n``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from meshlab.envs.base import Env
from meshlab.errors import ConfigError, Unsupported

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


def listing_shows(shell: Any, argv: list[str], mine: Callable[[str], bool],
                  made: bool = True) -> bool:
    """Run a listing (e.g. ``tc qdisc show dev eth0 root``) and tell whether it shows what a
    revert deletes (``mine(stdout)``). A dry run's shell (``shell.dry_run``) lists nothing: it
    counts as showing it when the fault's inject ``made`` it, so the revert prints the delete
    it would run."""
    res = shell.run(argv, check=False)
    if getattr(shell, "dry_run", False):
        return made
    return res.ok and mine(res.stdout)


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
        capability: e.g. :class:`~meshlab.envs.capabilities.PodLifecycle`.
        fault: the fault's registry key (for the message).
        needs: what the fault needs and the env lacks, e.g. ``"cannot kill pods (…)"``.

    Raises:
        Unsupported: ``<fault>: the <env> env <needs>`` (a :class:`ConfigError`).
    """
    if not isinstance(env, capability):
        raise Unsupported(f"{fault}: the {env.name} env {needs}")
    return env
