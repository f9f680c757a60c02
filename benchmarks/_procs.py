"""Processes of the benchmark: start pinned in a netns, wait for a port, read /proc CPU and RSS.

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (fields 14 and 15, in clock ticks of
``SC_CLK_TCK``, 10 ms on Linux) summed over the process and its children; RSS is ``VmRSS`` of
``/proc/<pid>/status`` in kB.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshlab.envs.local.netns import NetnsShell
from meshlab.envs.local.veth_pair import connect_in_netns

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """A started process and the role it plays (``sidecar-a``, ``nginx-b``, ``app`` …).

    ``pid`` is the process itself: ``ip netns exec``, ``setpriv`` and ``taskset`` all exec.
    """

    role: str
    popen: subprocess.Popen[bytes]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its direct children (an nginx master's worker)."""
        return [self.pid, *children(self.pid)]


def start(netns: str, argv: list[str], *, cpu: str, logdir: Path, role: str,
          user: str | None = None) -> Proc:
    """Start ``argv`` in ``netns`` pinned with ``taskset -c cpu``; stdout/stderr to ``logdir``.

    Raises:
        LabError: the command could not be started.
    """
    popen = NetnsShell(netns).popen(["taskset", "-c", cpu, *argv],
                                    stdout=logdir / f"{role}.out", stderr=logdir / f"{role}.err",
                                    user=user)
    return Proc(role, popen)


def wait_port(netns: str, address: tuple[str, int], proc: Proc, timeout_s: float = 15.0) -> None:
    """Poll until ``address`` accepts a connection from inside ``netns``.

    Raises:
        RuntimeError: ``proc`` exited, or the port never opened within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.role} exited with {proc.popen.returncode}")
        try:
            connect_in_netns(netns, address, timeout_s=1.0).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.role}: {address} not accepting: {exc}") from exc
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` file)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def comm_ticks(pid: int) -> tuple[str, int] | None:
    """``(comm, utime + stime in clock ticks)`` of ``pid`` from ``/proc/<pid>/stat`` (fields
    2, 14 and 15); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm, rest = stat.split(" (", 1)[1].rsplit(")", 1)
    fields = rest.split()
    return comm, int(fields[11]) + int(fields[12])


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids``; vanished pids count 0."""
    return sum((comm_ticks(pid) or ("", 0))[1] for pid in pids) * TICK_S


def rss_kb(pid: int) -> int:
    """``VmRSS`` of ``pid`` in kB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(procs: list[Proc], grace_s: float = 3.0) -> None:
    """SIGTERM each process, then SIGKILL what did not exit within ``grace_s``."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.terminate()
    for p in procs:
        try:
            p.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(timeout=grace_s)
