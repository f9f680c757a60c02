"""Container cgroups for the local lab, on cgroup v1 or v2 — whichever the machine has.

Layout (as the kubelet's ``kubepods/pod<uid>/<container>``): ``meshlab/<lab>/<pod>/<container>``
below a base directory per controller.

- **v1** (this lab's machine: ``cpu``, ``cpuacct``, ``memory``, ``freezer``, ``pids`` mounted
  under ``/sys/fs/cgroup/<ctrl>``): the tree is made under the runner's own cgroup of each
  controller (``/proc/self/cgroup``), so a runner confined by its own memory cgroup keeps its
  lab inside it (nesting, as delegation asks). CPU limit: ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``; memory: ``memory.limit_in_bytes``; pause: ``freezer.state``; CPU use:
  ``cpuacct.usage`` (ns); throttling: ``cpu.stat`` ``nr_throttled``/``throttled_time`` (ns).
- **v2** (stock Debian 12: one tree at ``/sys/fs/cgroup`` with ``cgroup.controllers``): the tree
  is made under the root (``/sys/fs/cgroup/meshlab``, the v2 "no internal processes" rule forbids
  controllers below a cgroup that holds the runner) with ``+cpu +memory +pids`` enabled down the
  path. CPU limit: ``cpu.max`` (``"<quota> <period>"``); memory: ``memory.max``; pause:
  ``cgroup.freeze``; CPU use and throttling: ``cpu.stat`` (``usage_usec``, ``nr_throttled``,
  ``throttled_usec``).

A CPU limit of ``m`` millicores is a CFS quota of ``m × period / 1000`` µs per ``period`` (the
kubelet's default period 100 ms, ``cpuQuotaToMilliCPU`` in pkg/kubelet/cm). Processes enter their
container's cgroup before they exec (:meth:`Cgroups.enter_argv`), so their children (the sidecar's
workers) are born inside it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from meshlab.errors import LabError
from meshlab.polling import PollTimeout, wait_until

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "freezer", "pids")
V2_CONTROLLERS = ("cpu", "memory", "pids")
CFS_PERIOD_US = 100_000  # the kubelet's cpu.cfs_period_us
TREE = "meshlab"


@dataclass(frozen=True)
class CpuStat:
    """A container's CPU counters: ``usage_us`` (CPU time used), ``nr_periods``,
    ``nr_throttled`` (periods in which it hit its quota), ``throttled_us`` (time spent
    throttled)."""

    usage_us: int
    nr_periods: int
    nr_throttled: int
    throttled_us: int


def _self_paths() -> dict[str, str]:
    """``{controller: path}`` of this process from ``/proc/self/cgroup`` (v1 lines)."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for ctrl in ctrls.split(","):
            if ctrl:
                paths[ctrl] = path
    return paths


class Cgroups:
    """The lab's cgroup operations on one machine (see the module docstring).

    Args:
        root: the cgroup mount point (tests may pass another).

    Attributes:
        version: 1 or 2.

    Raises:
        LabError: neither a v1 ``cpu``+``memory`` hierarchy nor a v2 tree with the ``cpu`` and
            ``memory`` controllers is available (the message says what is missing).
    """

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        controllers = root / "cgroup.controllers"
        if (root / "cpu").is_dir() and (root / "memory").is_dir():
            self.version = 1
            own = _self_paths()
            self._bases = {c: root / c / own.get(c, "/").lstrip("/") for c in V1_CONTROLLERS
                           if (root / c).is_dir()}
        elif controllers.is_file() and {"cpu", "memory"} <= set(controllers.read_text().split()):
            self.version = 2
            self._bases = {"unified": root}
        else:
            raise LabError(f"cgroups: no cpu and memory controllers under {root} (cgroup v1 "
                           f"mounts {root}/cpu and {root}/memory; v2 lists them in "
                           f"{controllers})")

    def __repr__(self) -> str:
        return f"Cgroups(v{self.version}, {sorted(self._bases)})"

    @property
    def has_freezer(self) -> bool:
        """Whether containers can be frozen here (v1 ``freezer`` mounted, or v2)."""
        return self.version == 2 or "freezer" in self._bases

    @property
    def freezer_file(self) -> str:
        """The file that freezes a cgroup here: ``freezer.state`` (v1) or ``cgroup.freeze``."""
        return "freezer.state" if self.version == 1 else "cgroup.freeze"

    # paths --------------------------------------------------------------------------------
    @staticmethod
    def rel(lab: str, pod: str | None = None, container: str | None = None) -> str:
        """``meshlab/<lab>[/<pod>[/<container>]]``."""
        return "/".join(p for p in (TREE, lab, pod, container) if p)

    def dirs(self, rel: str) -> dict[str, Path]:
        """``{controller: directory}`` of cgroup ``rel`` (v2: one entry, ``unified``)."""
        return {c: base / rel for c, base in self._bases.items()}

    def _file(self, rel: str, ctrl: str, name: str) -> Path:
        return self.dirs(rel)["unified" if self.version == 2 else ctrl] / name

    # create / enter / remove ----------------------------------------------------------------
    def create(self, rel: str) -> list[Path]:
        """Make cgroup ``rel`` and its parents (v2: with the controllers enabled down the path).

        Returns:
            The directories, one per controller hierarchy.

        Raises:
            LabError: a directory could not be made or a controller enabled.
        """
        try:
            if self.version == 2:
                node = self.root
                for part in rel.split("/"):
                    (node / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in V2_CONTROLLERS))
                    node = node / part
                    node.mkdir(exist_ok=True)
            made = []
            for path in self.dirs(rel).values():
                path.mkdir(parents=True, exist_ok=True)
                made.append(path)
            return made
        except OSError as exc:
            raise LabError(f"cgroups: cannot create {rel}: {exc}") from exc

    def enter_argv(self, rel: str, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that the process moves itself into ``rel`` before it execs (so
        everything it forks is born inside); if a move fails, it exits 1 instead. Wrap the
        whole command line, ``ip netns exec`` included: that mounts a fresh ``/sys`` without
        the cgroup hierarchies."""
        writes = " && ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in self.dirs(rel).values())
        return ["sh", "-c", f"{writes} && exec \"$0\" \"$@\"", *argv]

    def procs(self, rel: str) -> list[int]:
        """PIDs in ``rel`` and below (any hierarchy: each has them all)."""
        return tree_procs(next(iter(self.dirs(rel).values())))

    def remove(self, rel: str, kill: bool = True) -> list[str]:
        """Remove ``rel`` and everything below it in every hierarchy
        (:func:`remove_cgroup_dirs`). Idempotent.

        Returns:
            The directories removed.
        """
        return remove_cgroup_dirs(list(self.dirs(rel).values()), kill)

    # limits ---------------------------------------------------------------------------------
    def set_cpu_limit(self, rel: str, millicores: int | None,
                      period_us: int = CFS_PERIOD_US) -> None:
        """Set (or, with None, lift) ``rel``'s CFS quota: ``millicores`` of one CPU.

        Raises:
            LabError: the kernel refused the value (e.g. a quota under 1 ms).
        """
        quota = None if millicores is None else max(1000, millicores * period_us // 1000)
        try:
            if self.version == 1:
                self._file(rel, "cpu", "cpu.cfs_period_us").write_text(str(period_us))
                self._file(rel, "cpu", "cpu.cfs_quota_us").write_text(
                    "-1" if quota is None else str(quota))
            else:
                self._file(rel, "cpu", "cpu.max").write_text(
                    f"{'max' if quota is None else quota} {period_us}")
        except OSError as exc:
            raise LabError(f"cgroups: {rel}: cannot set the CPU quota to {quota}: "
                           f"{exc}") from exc

    def cpu_limit(self, rel: str) -> int | None:
        """``rel``'s CPU limit in millicores (None: unlimited)."""
        if self.version == 1:
            quota = int(self._file(rel, "cpu", "cpu.cfs_quota_us").read_text())
            period = int(self._file(rel, "cpu", "cpu.cfs_period_us").read_text())
        else:
            text, period_text = self._file(rel, "cpu", "cpu.max").read_text().split()
            quota, period = (-1 if text == "max" else int(text)), int(period_text)
        return None if quota < 0 else quota * 1000 // period

    def set_memory_limit(self, rel: str, limit_bytes: int | None) -> None:
        """Set (or lift) ``rel``'s memory limit; the kernel's OOM killer acts past it.

        Raises:
            LabError: the kernel refused it (e.g. below what the cgroup uses now).
        """
        try:
            if self.version == 1:
                self._file(rel, "memory", "memory.limit_in_bytes").write_text(
                    "-1" if limit_bytes is None else str(limit_bytes))
            else:
                self._file(rel, "memory", "memory.max").write_text(
                    "max" if limit_bytes is None else str(limit_bytes))
        except OSError as exc:
            raise LabError(f"cgroups: {rel}: cannot set the memory limit to {limit_bytes}: "
                           f"{exc}") from exc

    # freeze ---------------------------------------------------------------------------------
    def freeze(self, rel: str) -> None:
        """Freeze every process of ``rel`` (v1 ``freezer.state`` FROZEN, v2 ``cgroup.freeze``
        1) and wait until the kernel reports it frozen.

        Raises:
            LabError: no freezer here, or it did not freeze.
        """
        self._set_frozen(rel, True)

    def thaw(self, rel: str) -> None:
        """Undo :meth:`freeze` (idempotent; a missing cgroup is fine)."""
        try:
            self._set_frozen(rel, False)
        except LabError:
            pass

    def frozen(self, rel: str) -> bool:
        """Whether ``rel`` is frozen now."""
        try:
            if self.version == 1:
                return self._file(rel, "freezer", "freezer.state").read_text().strip() == "FROZEN"
            return "frozen 1" in self._file(rel, "cpu", "cgroup.events").read_text()
        except (OSError, KeyError):
            return False

    def _set_frozen(self, rel: str, frozen: bool) -> None:
        try:
            if self.version == 1:
                self._file(rel, "freezer", "freezer.state").write_text(
                    "FROZEN" if frozen else "THAWED")
            else:
                self._file(rel, "cpu", "cgroup.freeze").write_text("1" if frozen else "0")
            wait_until(lambda: self.frozen(rel) == frozen, timeout_s=5.0,
                       what=f"{rel} {'frozen' if frozen else 'thawed'}")
        except (OSError, KeyError, PollTimeout) as exc:
            raise LabError(f"cgroups: {rel}: cannot {'freeze' if frozen else 'thaw'}: "
                           f"{exc}") from exc

    # stats ----------------------------------------------------------------------------------
    def cpu_stat(self, rel: str) -> CpuStat:
        """``rel``'s CPU use and throttling counters.

        Raises:
            OSError: the cgroup is gone.
        """
        stat = dict(line.split() for line in
                    self._file(rel, "cpu", "cpu.stat").read_text().splitlines())
        if self.version == 1:
            usage_ns = int(self._file(rel, "cpuacct", "cpuacct.usage").read_text())
            return CpuStat(usage_ns // 1000, int(stat["nr_periods"]), int(stat["nr_throttled"]),
                           int(stat["throttled_time"]) // 1000)
        return CpuStat(int(stat["usage_usec"]), int(stat.get("nr_periods", 0)),
                       int(stat.get("nr_throttled", 0)), int(stat.get("throttled_usec", 0)))

    def memory_bytes(self, rel: str) -> int:
        """``rel``'s memory use in bytes (v1 ``memory.usage_in_bytes``, v2 ``memory.current``).

        Raises:
            OSError: the cgroup is gone.
        """
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return int(self._file(rel, "memory", name).read_text())

    def oom_kills(self, rel: str) -> int:
        """How many processes the OOM killer has killed in ``rel`` (v1 ``memory.oom_control``,
        v2 ``memory.events``, line ``oom_kill N``); 0 when the cgroup or the line is missing."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            lines = self._file(rel, "memory", name).read_text().splitlines()
        except OSError:
            return 0
        return next((int(v) for k, v in (ln.split() for ln in lines) if k == "oom_kill"), 0)


def tree_procs(top: Path) -> list[int]:
    """PIDs in cgroup directory ``top`` and below (empty if it does not exist)."""
    pids: set[int] = set()
    for sub, _, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                pids.update(int(p) for p in (Path(sub) / "cgroup.procs").read_text().split())
            except OSError:
                pass  # removed while walking
    return sorted(pids)


def remove_cgroup_dirs(tops: list[Path], kill: bool = True) -> list[str]:
    """Remove cgroup directories ``tops`` (one cgroup's directory in each hierarchy, or any
    set) and everything below them: thaw them all first (v1 ``freezer.state``, v2
    ``cgroup.freeze`` — a frozen process cannot die), SIGKILL what is still inside (if ``kill``)
    and wait until it is gone, then ``rmdir`` bottom-up. A directory that stays busy is left
    (the next cleanup retries). Idempotent.

    Returns:
        The directories removed.
    """
    tops = [t for t in tops if t.is_dir()]
    for top in tops:
        for sub, _, files in os.walk(top):
            for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                if name in files:
                    try:
                        (Path(sub) / name).write_text(value)
                    except OSError:
                        pass
    def kill_inside() -> bool:
        """SIGKILL everything inside (also what joined since the last look); True if empty."""
        pids = {p for top in tops for p in tree_procs(top)}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not pids

    if kill:
        try:  # an exiting process leaves its cgroup once it is gone
            wait_until(kill_inside, timeout_s=5.0, what="cgroups empty")
        except PollTimeout:
            pass
    removed = []
    for top in tops:
        for sub, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(sub)
                removed.append(sub)
            except OSError:
                pass
    return removed
