"""The ``containers`` series: each pod's containers' CPU use, CFS throttling and memory, from
the env's container cgroups (:class:`~meshlab.envs.capabilities.Containers`; the local lab's
``cpuacct``/``cpu.stat``/``memory`` files).

One line per pod and tick: ``{"containers": {container: {"cpu_usage_us", "nr_periods",
"nr_throttled", "throttled_us", "memory_bytes", "cpu_limit_m"}}}`` — cumulative counters as
the kernel keeps them (the report turns them into CPU cores used and throttled periods per
second, as cAdvisor's ``container_cpu_usage_seconds_total`` and
``container_cpu_cfs_throttled_periods_total`` are read with ``rate()``), memory and the limit
as they are now. A read is a handful of small cgroupfs files: no process is spawned.
"""

from __future__ import annotations

from typing import Any

from meshlab.envs.capabilities import Containers


class ContainersTarget:
    """A sampler target: one pod's container cgroups per read.

    Args:
        env: an env with the :class:`~meshlab.envs.capabilities.Containers` capability.
        pod: the pod (the series' ``target``).
    """

    series = "containers"

    def __init__(self, env: Containers, pod: str) -> None:
        self.env = env
        self.name = pod

    def __repr__(self) -> str:
        return f"ContainersTarget(name={self.name!r})"

    def read(self) -> dict[str, Any] | None:
        """``{"containers": {...}}`` (None when the pod has no container cgroup, e.g. on a
        machine without cgroups); raises when the pod's cgroups cannot be read."""
        usage = self.env.container_usage(self.name)
        return {"containers": usage} if usage else None
