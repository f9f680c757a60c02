"""Killing a container or deleting a pod in the local lab, and waiting until the kubelet has it
ready again (the :class:`~meshlab.envs.capabilities.PodLifecycle` capability).

A killed container gets SIGTERM, then SIGKILL after ``grace_s`` (0: SIGKILL at once, as Chaos
Mesh's ``pod-kill``/``container-kill`` with ``gracePeriod: 0``); a frozen container is thawed
first, since a frozen process cannot die. Deleting a pod records it in ``LabState.deleting``
before its containers are signalled; the kubelet loop (:mod:`meshlab.envs.local.kubelet_daemon`)
finishes the kill once the grace period is over and creates the pod again. Either way the pod
is marked not ready at once, and the kubelet takes it out of its Services' endpoints at its
next relist — the window in between is the one where callers still pick the dead endpoint.

:func:`restart_pods` gives every pod fresh processes at once (the
:class:`~meshlab.envs.capabilities.FreshPods` capability: runs that share a lab start alike).
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from meshlab.envs.local import istio_push, kubelet
from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.kubelet import cgroups
from meshlab.envs.local.netns import NetnsShell, kill_pids, process_alive
from meshlab.envs.local.network import program_services
from meshlab.envs.local.plan import LabPlan
from meshlab.envs.local.pod_status import ContainerStatus
from meshlab.envs.local.state import LabState, locked_state
from meshlab.errors import ConfigError, LabError
from meshlab.polling import PollTimeout, wait_until

KILL_WAIT_S = 5.0
"""Seconds a SIGKILLed process may take to be gone."""


def kill_pod(lab: str, pod: str, container: str | None, grace_s: float) -> str:
    """Kill ``container`` of ``pod`` (None: delete the whole pod); see the module docstring.

    Raises:
        ConfigError: a negative ``grace_s``, or no such container.
        LabError: the lab is not up.
    """
    if grace_s < 0:
        raise ConfigError(f"grace_s: must be >= 0 seconds, got {grace_s}")
    with locked_state(lab) as state:
        if state is None or state.status != "up":
            raise LabError(f"pod kill {pod}: lab {lab!r} is not up")
        keys = sorted(k for k in state.pids if k.split("/", 1)[0] == pod)
        if container is not None:
            keys = [k for k in keys if k == f"{pod}/{container}"]
            if not keys:
                raise ConfigError(f"container: pod {pod} runs no container {container!r} now")
        if container is None:
            state.deleting[pod] = time.time() + grace_s
        state.unready = sorted({*state.unready, pod})
        state.save()
        pids = [state.pids[k] for k in keys]
        groups = cgroups()
        for key in keys:
            if groups is not None:
                groups.thaw(Cgroups.rel(lab, *key.split("/", 1)))
        start = time.monotonic()  # killed under the lock: the kubelet sees them dead, not dying
        kill_pids(pids, grace_s=grace_s,
                  first=signal.SIGKILL if grace_s == 0 else signal.SIGTERM)
        wait_until(lambda: not any(map(process_alive, pids)), timeout_s=KILL_WAIT_S,
                   what=f"{pod}'s killed processes gone")
    what = f"container {container}" if container else "pod (deleted; recreated by its StatefulSet)"
    return (f"{pod}: killed {what}, {len(pids)} process(es) "
            f"({'SIGKILL' if grace_s == 0 else f'SIGTERM, {grace_s:g} s grace'}) in "
            f"{time.monotonic() - start:.2f} s")


def container_statuses(state: LabState | None, pod: str) -> dict[str, dict[str, Any]]:
    """``{container: summary}`` of ``pod`` (:meth:`ContainerStatus.summary`)."""
    containers = state.containers if state else {}
    return {k.split("/", 1)[1]: ContainerStatus.from_dict(v).summary()
            for k, v in sorted(containers.items()) if k.split("/", 1)[0] == pod}


def pod_ready(state: LabState | None, pod: str) -> bool:
    """Whether ``pod`` is ready now: not being deleted, not marked not-ready by the kubelet."""
    return state is not None and pod not in state.unready and pod not in state.deleting


def wait_pod_ready(lab: str, pod: str, timeout_s: float) -> float:
    """Poll the lab state until ``pod`` is ready (:func:`pod_ready`); returns seconds waited.

    Raises:
        LabError: not ready within ``timeout_s`` (names the containers' states).
    """
    start = time.monotonic()
    try:
        wait_until(lambda: pod_ready(LabState.load(lab), pod), timeout_s=timeout_s,
                   every_s=0.05, what=f"pod {pod} ready")
    except PollTimeout:
        raise LabError(f"pod {pod} not ready after {timeout_s:g} s: "
                       f"{container_statuses(LabState.load(lab), pod)}") from None
    return time.monotonic() - start


def restart_pods(plan: LabPlan, lab: str, ready_timeout_s: float) -> str:
    """Give every pod of a running lab fresh processes, as a rollout restart gives new pods of
    the same names: under the state lock (the kubelet loop waits), SIGKILL every container
    (thawed first), forget their statuses (restart counts 0), flush conntrack in the pods' and
    nodes' namespaces, start every pod again and wait until ready, and resync kube-proxy's
    rules with every endpoint. The network, cluster DNS and Prometheus stay.

    Raises:
        LabError: the lab is not up, or a pod did not become ready.
    """
    start = time.monotonic()
    with locked_state(lab) as state:
        if state is None or state.status != "up":
            raise LabError(f"restart pods: lab {lab!r} is not up")
        pods = [pp for pp in plan.pods.values() if pp.node.name not in state.powered_off]
        keys = [k for k in state.pids if k.split("/", 1)[0] in plan.pods]
        groups = cgroups()
        for key in keys:
            if groups is not None:
                groups.thaw(Cgroups.rel(lab, *key.split("/", 1)))
        pids = [state.pids.pop(k) for k in keys]
        kill_pids(pids, grace_s=KILL_WAIT_S, first=signal.SIGKILL)
        state.containers = {k: v for k, v in state.containers.items() if k not in keys}
        state.unready, state.deleting = [], {}
        state.save()
        for netns in [pp.netns for pp in pods] + [pp.node.netns for pp in pods]:
            NetnsShell(netns).run(["conntrack", "-F"], check=False, timeout_s=10)
        kubelet.start_pods(plan, state, pods, ready_timeout_s)
        for node in {pp.node.name: pp.node for pp in pods}.values():
            program_services(istio_push.pushed_plan(plan, state), node, resync=True)
    return (f"{len(pods)} pod(s) restarted ({len(pids)} process(es) replaced) in "
            f"{time.monotonic() - start:.2f} s")


class PodLifecycleMixin:
    """The local env's :class:`~meshlab.envs.capabilities.PodLifecycle` and
    :class:`~meshlab.envs.capabilities.FreshPods` methods (a mixin of
    :class:`~meshlab.envs.local.lab.LocalEnv`, which provides the attributes below)."""

    lab: str
    plan: LabPlan
    state: LabState
    ready_timeout_s: float

    if TYPE_CHECKING:  # pragma: no cover - LocalEnv's
        def pod(self, name: str) -> Any: ...

    def kill_pod(self, pod: str, container: str | None, grace_s: float) -> str:
        """Kill a container (restarted by the kubelet) or delete the pod (recreated)."""
        return kill_pod(self.lab, self.pod(pod).name, container, grace_s)

    def container_statuses(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {"restarts", "state", ...}}`` as the kubelet has them now."""
        return container_statuses(LabState.load(self.lab), self.pod(pod).name)

    def wait_pod_ready(self, pod: str, timeout_s: float) -> float:
        """Poll until the pod is ready again; returns the seconds waited."""
        return wait_pod_ready(self.lab, self.pod(pod).name, timeout_s)

    def restart_pods(self) -> str:
        """Fresh processes for every pod (:func:`restart_pods`)."""
        out = restart_pods(self.plan, self.lab, self.ready_timeout_s)
        self.state = LabState.load(self.lab) or self.state
        return out
