"""The local lab's state file and leftover cleanup.

``/run/meshlab/<lab>/state.json`` records what a lab created (netns names, PIDs, status); it is
written *before* each resource is created, so a runner killed with ``kill -9`` mid-build still
leaves a complete list. Cleanup also scans by the ``ml-<lab>-`` prefix, so even a lost state
file leaves nothing behind. ``/run`` is a tmpfs: a reboot clears both the netns and the state.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshlab.envs.base import STATE_ROOT
from meshlab.envs.local.cgroups import TREE, Cgroups, remove_cgroup_dirs
from meshlab.envs.local.netns import ETC_NETNS, delete_netns, kill_pids, list_netns
from meshlab.envs.local.plan import lab_prefix
from meshlab.errors import LabError


@dataclass
class LabState:
    """What one lab created.

    Attributes:
        lab: lab name.
        status: ``building``, ``up``, ``tearing-down`` or ``down``.
        manifests: the manifests folders the lab was built from (base, then overlays).
        netns: namespaces created (or about to be), in creation order.
        pids: process name (``<pod>/<container>``) → PID.
        sysctls: ``<netns> <key>`` → value set by the lab (for the report).
        powered_off: nodes that are powered off now (:mod:`meshlab.envs.local.node_power`).
        cgroups: container cgroup directories made (absolute, every hierarchy), recorded
            before they are made (:mod:`meshlab.envs.local.cgroups`).
        route_faults: VirtualService faults pushed live, ``"<fqdn>|<port or *>"`` →
            ``{abort_status, abort_pct, delay_s, delay_pct}``
            (:mod:`meshlab.envs.local.istio_push`).
        kubelet_pid: the lab's kubelet daemon (:mod:`meshlab.envs.local.kubelet_daemon`), 0
            when none runs.
        containers: ``<pod>/<container>`` → its status as the kubelet keeps it
            (:class:`meshlab.envs.local.pod_status.ContainerStatus` as a dict: restart count,
            state, last termination, CrashLoopBackOff entry).
        unready: pods that are not ready now: out of every Service's endpoints (kube-proxy
            rules and the sidecars' EDS) until they are ready again.
        deleting: pods being deleted (``pod-kill`` of a whole pod) → epoch seconds of the
            deletion; the kubelet recreates each with the same name, as its StatefulSet does.
        dns: the cluster DNS (:mod:`meshlab.envs.local.kube_dns`): ``{"pid", "netns", "ip",
            "cluster_ip", "config", "log"}``, recorded before dnsmasq starts; a dns-error
            fault front adds ``front_pid`` while it runs (:mod:`meshlab.envs.local.dns_front`).
        updated_at: epoch seconds of the last write.
    """

    lab: str
    status: str = "building"
    manifests: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    powered_off: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    route_faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    kubelet_pid: int = 0
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    unready: list[str] = field(default_factory=list)
    deleting: dict[str, float] = field(default_factory=dict)
    dns: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0

    @staticmethod
    def dir_for(lab: str) -> Path:
        """The lab's state folder (``/run/meshlab/<lab>``)."""
        return STATE_ROOT / lab

    @property
    def dir(self) -> Path:
        """This lab's state folder."""
        return self.dir_for(self.lab)

    def save(self) -> None:
        """Write the state atomically (tmp file + rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.updated_at = time.time()
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.dir / "state.json")

    @classmethod
    def load(cls, lab: str) -> LabState | None:
        """The saved state of ``lab``, or None if there is none (or it is unreadable)."""
        path = cls.dir_for(lab) / "state.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


@contextmanager
def locked_state(lab: str) -> Iterator[LabState | None]:
    """The lab state loaded fresh under the lab's ``state.lock`` (None: no lab), for a
    read-modify-write: the runner, the fault deadman, node power-off/on, Prometheus and the
    kubelet daemon all change the one state file, and a write made from a stale copy would lose
    another's change. The caller saves; the lock is released on exit."""
    folder = LabState.dir_for(lab)
    if not folder.is_dir():
        yield None
        return
    with open(folder / "state.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield LabState.load(lab)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def leftovers(lab: str) -> list[str]:
    """Namespaces of ``lab`` that exist now: from the state file and by name prefix."""
    state = LabState.load(lab)
    prefix = lab_prefix(lab)
    names = set(state.netns if state else []) | {n for n in list_netns() if n.startswith(prefix)}
    return sorted(n for n in names if n.startswith(prefix))


def remove_cgroups(lab: str, recorded: list[str]) -> None:
    """Remove ``lab``'s container cgroups: the ``recorded`` directories (made by another
    runner, maybe under another parent) and ``meshlab/<lab>`` under this runner's bases —
    thawing and killing whatever is still inside."""
    try:
        groups = Cgroups()
    except LabError:
        groups = None
    if groups is not None:
        groups.remove(Cgroups.rel(lab))
    tops = set()
    for path in recorded:  # .../meshlab/<lab>/<pod>/<container>: remove from .../meshlab/<lab>
        parts = Path(path).parts
        for i in range(len(parts) - 1):
            if parts[i:i + 2] == (TREE, lab):
                tops.add(Path(*parts[:i + 2]))
                break
    remove_cgroup_dirs(sorted(tops))


def cleanup(lab: str) -> list[str]:
    """Remove everything lab ``lab`` left: processes, cgroups, namespaces, /etc/netns files,
    state.

    Pods go first, then nodes, then the cluster netns (so no veth peer is left dangling).

    Returns:
        The namespaces that were removed.
    """
    state = LabState.load(lab)
    if state and state.kubelet_pid:  # first, so it restarts nothing that is being torn down
        kill_pids([state.kubelet_pid])
        state = LabState.load(lab) or state  # with the pids it started last
    if state:
        state.status = "tearing-down"
        state.save()
        kill_pids(list(state.pids.values()))
        kill_pids([p for p in (state.dns.get("pid"), state.dns.get("front_pid")) if p])
    names = leftovers(lab)
    prefix = lab_prefix(lab)
    order = sorted(names, key=lambda n: (0 if n.startswith(prefix + "p-") else
                                         1 if n.startswith(prefix + "n") else 2, n))
    remove_cgroups(lab, state.cgroups if state else [])
    for name in order:
        delete_netns(name)
    if ETC_NETNS.is_dir():
        for etc in ETC_NETNS.iterdir():
            if etc.name.startswith(prefix):
                shutil.rmtree(etc, ignore_errors=True)
    shutil.rmtree(LabState.dir_for(lab), ignore_errors=True)
    return order
