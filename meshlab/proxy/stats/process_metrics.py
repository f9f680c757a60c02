"""The sidecar process's own ``process_*`` metrics, as istio-agent's 15020 output starts with.

pilot-agent's merged ``/stats/prometheus`` begins with the agent's registry, which holds
client_golang's process collector (``prometheus/client_golang`` ``process_collector_procfs.go``,
reading ``/proc/self/stat`` through ``prometheus/procfs``): CPU seconds, resident and virtual
memory, start time and file descriptors of the agent process. meshlab's sidecar plays both
pilot-agent and Envoy (one process, or a main and its workers: then the values cover all of
them, :func:`process_values`), so the same names describe the whole sidecar: Prometheus
reads ``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` from the 15020 target
(:mod:`meshlab.collectors.prometheus`, ``sidecar_cpu_seconds`` / ``sidecar_memory_bytes``).

``/proc/self/stat`` fields (proc(5), counted from 1): 14 ``utime`` and 15 ``stime`` in clock
ticks, 22 ``starttime`` in ticks after boot, 23 ``vsize`` in bytes, 24 ``rss`` in pages.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

PROC = Path("/proc")
# (name, type, help) in client_golang's order and wording
_METRICS = (
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_start_time_seconds", "gauge",
     "Start time of the process since unix epoch in seconds."),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
)


def _boot_time_s(proc: Path) -> float:
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _one_process(proc: Path, base: Path) -> dict[str, float]:
    stat = (base / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    ticks = os.sysconf("SC_CLK_TCK")
    values = {
        "process_cpu_seconds_total": (int(fields[11]) + int(fields[12])) / ticks,
        "process_resident_memory_bytes": float(int(fields[21]) * os.sysconf("SC_PAGE_SIZE")),
        "process_start_time_seconds": _boot_time_s(proc) + int(fields[19]) / ticks,
        "process_virtual_memory_bytes": float(int(fields[20])),
    }
    try:
        values["process_open_fds"] = float(len(os.listdir(base / "fd")))
    except OSError:
        pass
    return values


_SUMMED = ("process_cpu_seconds_total", "process_virtual_memory_bytes", "process_open_fds")


def _pss_bytes(base: Path) -> int | None:
    try:
        text = (base / "smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def _rss_bytes(base: Path) -> int:
    try:
        return int((base / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def group_resident_bytes(bases: list[Path]) -> int:
    """Resident memory of a group of processes (``/proc/<pid>`` folders) that share pages, as
    forked workers do: the sum of their proportional set sizes (``smaps_rollup`` ``Pss``), so a
    page shared by the group counts once; a process whose ``smaps_rollup`` cannot be read
    counts its RSS. One process: its RSS."""
    if len(bases) == 1:
        return _rss_bytes(bases[0])
    total = 0
    for base in bases:
        pss = _pss_bytes(base)
        total += pss if pss is not None else _rss_bytes(base)
    return total


def process_values(proc: Path = PROC, pids: list[int] | None = None) -> dict[str, float]:
    """The calling process's metrics, by metric name; with ``pids`` (a sidecar's main first,
    then its workers) CPU, virtual memory and descriptors are summed over them, resident memory
    is :func:`group_resident_bytes` and the start time is the first one's, so the sidecar reads
    as one process as Envoy's threads do.

    Args:
        proc: the procfs mount.
        pids: processes to add up (None: the calling process). One that is gone is skipped.

    Returns:
        ``{metric name: value}`` (seconds, bytes, counts); ``process_open_fds`` is left out
        when a ``/proc/<pid>/fd`` cannot be listed.

    Raises:
        OSError: the first process's ``stat`` cannot be read.
    """
    bases = [proc / "self"] if not pids else [proc / str(pid) for pid in pids]
    values = _one_process(proc, bases[0])
    if len(bases) > 1:  # shared pages once: what the container's memory cgroup charges
        values["process_resident_memory_bytes"] = float(group_resident_bytes(bases))
    for base in bases[1:]:
        try:
            more = _one_process(proc, base)
        except (OSError, ValueError, IndexError):
            continue
        for name in _SUMMED:  # a worker whose fds cannot be listed adds none
            if name in values and name in more:
                values[name] += more[name]
    values["process_max_fds"] = float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return values


def render_process_metrics(proc: Path = PROC, pids: list[int] | None = None) -> str:
    """Prometheus text (exposition format 0.0.4) of the calling process's metrics (summed over
    ``pids`` when given, see :func:`process_values`), with ``# HELP`` / ``# TYPE`` lines as
    client_golang writes them; empty if ``/proc`` is unreadable."""
    try:
        values = process_values(proc, pids)
    except (OSError, ValueError, IndexError):
        return ""
    out = []
    for name, kind, text in _METRICS:
        if name in values:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {values[name]!r}"]
    return "\n".join(out) + "\n"
