"""Container status as the local kubelet keeps it: restart count, state, last termination and
the CrashLoopBackOff entry (kept in the lab state, ``LabState.containers``).

CrashLoopBackOff follows the kubelet (K: ``pkg/kubelet/kuberuntime/kuberuntime_manager.go``
``doBackOff`` over client-go ``util/flowcontrol`` ``Backoff``): the first exit of a container
is restarted at once and starts a backoff entry of 10 s; each later exit waits until the entry's
backoff has passed since the container *finished*, then restarts and doubles it, capped at
300 s. An entry not updated for twice the cap (10 min) has expired: a container that ran that
long starts over (restarted at once, next wait 10 s). A lab's ``scale`` (LabCluster
``spec.kubelet.crashLoopBackOffScale``) multiplies every one of these durations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

INITIAL_BACKOFF_S = 10.0
"""The kubelet's first CrashLoopBackOff wait (``backOffPeriod``)."""
MAX_BACKOFF_S = 300.0
"""The kubelet's cap (``MaxContainerBackOff``); an entry expires after twice this."""

RUNNING, WAITING, TERMINATED = "running", "waiting", "terminated"
CRASH_LOOP = "CrashLoopBackOff"
OOM_KILLED = "OOMKilled"
ERROR = "Error"
COMPLETED = "Completed"


@dataclass
class ContainerStatus:
    """One container's status (as ``kubectl get pod -o yaml`` ``containerStatuses`` has it).

    Attributes:
        restart_count: restarts since the pod was created (a recreated pod starts at 0).
        state: ``running``, ``waiting`` (``reason`` ``CrashLoopBackOff``) or ``terminated``.
        reason: the waiting reason, if any.
        started_at: epoch seconds the current (or last) process started.
        finished_at: epoch seconds the last process was seen gone (0: never).
        last_exit_reason: ``OOMKilled``, ``Error`` or ``Completed`` (empty: never exited).
        last_exit_code: its exit status, or ``128 + signal``; None when the kubelet did not
            start that process itself (a process started by ``up`` is another process's
            child, whose status it cannot read).
        backoff_s: the backoff entry's current wait in seconds (0: no entry).
        backoff_updated_at: epoch seconds the entry last changed.
        oom_kills: the container cgroup's ``oom_kill`` count when the process started.
    """

    restart_count: int = 0
    state: str = RUNNING
    reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    last_exit_reason: str = ""
    last_exit_code: int | None = None
    backoff_s: float = 0.0
    backoff_updated_at: float = 0.0
    oom_kills: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ContainerStatus:
        """From its state-file form (unknown keys ignored; None gives a fresh status)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Its state-file form."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What ``meshlab status`` shows: ``{"restarts", "state", "reason", "last_exit"}``."""
        out: dict[str, Any] = {"restarts": self.restart_count, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        if self.last_exit_reason:
            out["last_exit"] = {"reason": self.last_exit_reason, "code": self.last_exit_code}
        return out


def _expired(st: ContainerStatus, at: float, scale: float) -> bool:
    return at - st.backoff_updated_at > 2 * MAX_BACKOFF_S * scale


def restart_due_at(st: ContainerStatus, scale: float) -> float:
    """Epoch seconds from which the exited container may restart: at once (its finish time)
    without a live backoff entry, else ``finished_at + backoff_s``."""
    if not st.backoff_s or _expired(st, st.finished_at, scale):
        return st.finished_at
    return st.finished_at + st.backoff_s


def note_restart(st: ContainerStatus, now: float, scale: float) -> None:
    """Record a restart at ``now``: count it and move the backoff entry on (a new or expired
    entry starts at the initial wait, a live one doubles up to the cap)."""
    if not st.backoff_s or _expired(st, now, scale):
        st.backoff_s = INITIAL_BACKOFF_S * scale
    else:
        st.backoff_s = min(2 * st.backoff_s, MAX_BACKOFF_S * scale)
    st.backoff_updated_at = now
    st.restart_count += 1
    st.state, st.reason, st.started_at = RUNNING, "", now


def note_exit(st: ContainerStatus, now: float, code: int | None, oom_killed: bool) -> None:
    """Record that the process is gone: its reason (``OOMKilled`` when the cgroup's OOM
    killer struck, ``Completed`` for exit status 0, else ``Error``) and code."""
    st.finished_at = now
    st.last_exit_code = 137 if oom_killed and code is None else code
    st.last_exit_reason = OOM_KILLED if oom_killed else COMPLETED if code == 0 else ERROR
    st.state, st.reason = TERMINATED, ""


def lab_status(state: object | None, lab: str, netns: list[str]) -> dict[str, Any]:
    """What ``meshlab status`` prints for a local lab: ``{"lab", "status", "netns", "pids",
    "containers": {"<pod>/<container>": summary}, "not_ready": [pod, ...]}`` (``state`` is the
    :class:`~meshlab.envs.local.state.LabState`, None when there is none)."""
    containers = getattr(state, "containers", {}) or {}
    return {"lab": lab, "status": getattr(state, "status", "down"), "netns": netns,
            "pids": dict(getattr(state, "pids", {}) or {}),
            "containers": {k: ContainerStatus.from_dict(v).summary()
                           for k, v in sorted(containers.items())},
            "not_ready": list(getattr(state, "unready", []) or [])}
