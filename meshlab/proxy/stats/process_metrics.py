"""The sidecar process's own ``process_*`` metrics, as istio-agent's 15020 output starts with.

pilot-agent's merged ``/stats/prometheus`` begins with the agent's registry, which holds
client_golang's process collector (``prometheus/client_golang`` ``process_collector_procfs.go``,
reading ``/proc/self/stat`` through ``prometheus/procfs``): CPU seconds, resident and virtual
memory, start time and file descriptors of the agent process. meshlab's sidecar is one process
playing both pilot-agent and Envoy, so the same names describe the whole sidecar: Prometheus
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


def process_values(proc: Path = PROC) -> dict[str, float]:
    """The calling process's metrics, by metric name.

    Args:
        proc: the procfs mount.

    Returns:
        ``{metric name: value}`` (seconds, bytes, counts); ``process_open_fds`` is left out
        when ``/proc/self/fd`` cannot be listed.

    Raises:
        OSError: ``/proc/self/stat`` cannot be read.
    """
    base = proc / "self"
    stat = (base / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    ticks = os.sysconf("SC_CLK_TCK")
    values = {
        "process_cpu_seconds_total": (int(fields[11]) + int(fields[12])) / ticks,
        "process_max_fds": float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "process_resident_memory_bytes": float(int(fields[21]) * os.sysconf("SC_PAGE_SIZE")),
        "process_start_time_seconds": _boot_time_s(proc) + int(fields[19]) / ticks,
        "process_virtual_memory_bytes": float(int(fields[20])),
    }
    try:
        values["process_open_fds"] = float(len(os.listdir(base / "fd")))
    except OSError:
        pass
    return values


def render_process_metrics(proc: Path = PROC) -> str:
    """Prometheus text (exposition format 0.0.4) of the calling process's metrics, with
    ``# HELP`` / ``# TYPE`` lines as client_golang writes them; empty if ``/proc`` is unreadable."""
    try:
        values = process_values(proc)
    except (OSError, ValueError, IndexError):
        return ""
    out = []
    for name, kind, text in _METRICS:
        if name in values:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {values[name]!r}"]
    return "\n".join(out) + "\n"
