"""The local lab's per-container operations (the :class:`~meshlab.envs.capabilities.Containers`
capability): pause/resume, live CPU limit, CPU and memory use — on the container cgroups the
kubelet made (:mod:`meshlab.envs.local.cgroups`).

Pause uses the freezer (v1 ``freezer.state``, v2 ``cgroup.freeze``), as ``docker pause`` and
Chaos Mesh's container pause do: every process of the container stops at once, its sockets stay
open and silent. Without a freezer the fallback is SIGSTOP/SIGCONT to the container's processes
(a stopped process is visible to its parent, a frozen one is not — the reason the freezer comes
first).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.netns import process_alive
from meshlab.envs.local.state import LabState
from meshlab.errors import ConfigError, LabError


def container_names(state: LabState, pod: str) -> list[str]:
    """The containers of ``pod`` that run processes (``istio-proxy`` included), also one the
    kubelet is about to restart."""
    return sorted({key.split("/", 1)[1] for key in (*state.pids, *state.containers)
                   if key.split("/", 1)[0] == pod})


class LocalContainers:
    """Container operations on one lab's state.

    Args:
        state: the lab's state (pids, cgroups).
        groups: the machine's cgroups, or None where there are none (pause falls back to
            SIGSTOP; CPU limits and usage are refused).
    """

    def __init__(self, state: LabState, groups: Cgroups | None) -> None:
        self.state = state
        self.groups = groups

    def rel(self, pod: str, container: str) -> str:
        """The container's cgroup (``meshlab/<lab>/<pod>/<container>``).

        Raises:
            ConfigError: the pod runs no such container.
        """
        known = container_names(self.state, pod)
        if container not in known:
            raise ConfigError(f"pod {pod}: no container {container!r} (containers: "
                              f"{', '.join(known) or 'none running'})")
        return Cgroups.rel(self.state.lab, pod, container)

    def need_groups(self, what: str) -> Cgroups:
        """The machine's cgroups.

        Raises:
            LabError: there are none (``what`` names the operation).
        """
        if self.groups is None:
            raise LabError(f"{what}: this machine has no cgroup cpu/memory controllers")
        return self.groups

    def _pids(self, pod: str, container: str) -> list[int]:
        rel = self.rel(pod, container)
        pids = self.groups.procs(rel) if self.groups else []
        return pids or [p for p in [self.state.pids[f"{pod}/{container}"]] if process_alive(p)]

    def pause(self, pod: str, container: str) -> str:
        """Freeze the container (SIGSTOP without a freezer); returns what was done.

        Raises:
            ConfigError: no such container. LabError: it could not be paused.
        """
        rel = self.rel(pod, container)
        if self.groups is not None and self.groups.has_freezer:
            self.groups.freeze(rel)
            return f"{pod}/{container}: frozen ({self.groups.freezer_file})"
        pids = self._pids(pod, container)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return f"{pod}/{container}: SIGSTOP to {pids}"

    def resume(self, pod: str, container: str) -> str:
        """Undo :meth:`pause` (idempotent)."""
        rel = self.rel(pod, container)
        if self.groups is not None and self.groups.has_freezer:
            was = self.groups.frozen(rel)
            self.groups.thaw(rel)
            return f"{pod}/{container}: {'thawed' if was else 'not frozen'}"
        pids = self._pids(pod, container)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return f"{pod}/{container}: SIGCONT to {pids}"

    def paused(self, pod: str, container: str) -> bool:
        """Whether the container is frozen (or, without a freezer, its process stopped)."""
        rel = self.rel(pod, container)
        if self.groups is not None and self.groups.has_freezer:
            return self.groups.frozen(rel)
        try:
            pid = self.state.pids[f"{pod}/{container}"]
            fields = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return fields.rsplit(")", 1)[1].split()[0] == "T"

    def cpu_limit(self, pod: str, container: str) -> int | None:
        """The container's CPU limit in millicores (None: unlimited).

        Raises:
            ConfigError: no such container. LabError: no cgroups here.
        """
        rel = self.rel(pod, container)
        return self.need_groups("cpu limit").cpu_limit(rel)

    def set_cpu_limit(self, pod: str, container: str, millicores: int | None) -> str:
        """Change the container's CFS quota live (None lifts it); returns what was done.

        Raises:
            ConfigError: no such container. LabError: no cgroups, or the kernel refused it.
        """
        rel = self.rel(pod, container)
        self.need_groups("cpu limit").set_cpu_limit(rel, millicores)
        return f"{pod}/{container}: cpu limit {'none' if millicores is None else f'{millicores}m'}"

    def usage(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {cpu_usage_us, nr_periods, nr_throttled, throttled_us, memory_bytes,
        cpu_limit_m, restarts}}`` of every container of ``pod`` whose cgroup exists
        (``restarts``: the kubelet's restart count).

        Raises:
            LabError: no cgroups here.
        """
        groups = self.need_groups("container usage")
        out = {}
        for container in container_names(self.state, pod):
            rel = Cgroups.rel(self.state.lab, pod, container)
            try:
                cpu = groups.cpu_stat(rel)
                out[container] = {"cpu_usage_us": cpu.usage_us, "nr_periods": cpu.nr_periods,
                                  "nr_throttled": cpu.nr_throttled,
                                  "throttled_us": cpu.throttled_us,
                                  "memory_bytes": groups.memory_bytes(rel),
                                  "cpu_limit_m": groups.cpu_limit(rel),
                                  "restarts": self.state.containers.get(
                                      f"{pod}/{container}", {}).get("restart_count", 0)}
            except OSError:
                continue  # not made (no cgroups at up) or gone with its node
        return out
