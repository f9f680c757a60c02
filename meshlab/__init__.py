"""meshlab: a test-bed and chaos-testing framework for service meshes (Istio/Envoy).

The local env builds the layered fortio lab from real Linux network namespaces with an
embedded istio-proxy-like sidecar; the kube env applies the same manifests to a cluster.

What a suite needs is importable from here (``from meshlab import Run, TpsAtLeast, PacketDrop,
wait_until``): the run API, the checks, the faults, polling and the env protocol. The names are
loaded on first use (PEP 562 ``__getattr__``), so importing a submodule — the sidecar in every
pod imports ``meshlab.proxy`` — does not load the whole framework.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    # the run API (the ``meshlab_run`` fixture is a Run)
    "Run": "meshlab.experiment", "LabNames": "meshlab.experiment.names",
    "SystemUnderTestError": "meshlab.errors",
    # checks
    "Check": "meshlab.checks", "Verdict": "meshlab.checks", "assert_all": "meshlab.checks",
    "TpsAtLeast": "meshlab.checks", "LatencyPercentileAtMost": "meshlab.checks",
    "ErrorRateAtMost": "meshlab.checks", "OnlyResponseFlags": "meshlab.checks",
    "ResponseFlagsCount": "meshlab.checks", "SocketCount": "meshlab.checks",
    "StatAtLeast": "meshlab.checks", "StatAtMost": "meshlab.checks",
    "StatBounds": "meshlab.checks",
    # faults, by class and by registry key
    "Fault": "meshlab.faults.protocol", "create_fault": "meshlab.faults.registry",
    "Bandwidth": "meshlab.faults.bandwidth",
    "ConntrackDelete": "meshlab.faults.conntrack_delete",
    "ConntrackTimeouts": "meshlab.faults.conntrack_timeouts",
    "ContainerPause": "meshlab.faults.container_pause",
    "CpuLimit": "meshlab.faults.cpu_limit",
    "CpuStress": "meshlab.faults.cpu_stress",
    "HalfClose": "meshlab.faults.half_close",
    "HttpFault": "meshlab.faults.http_fault",
    "NetworkDelay": "meshlab.faults.network_delay",
    "NetworkPartition": "meshlab.faults.network_partition",
    "NodePowerOff": "meshlab.faults.node_poweroff",
    "PacketDrop": "meshlab.faults.packet_drop",
    "PodKill": "meshlab.faults.pod_kill",
    "RejectConnections": "meshlab.faults.reject_connections",
    # polling, loads, envs, errors
    "wait_until": "meshlab.polling", "PollTimeout": "meshlab.polling",
    "LoadSpec": "meshlab.load.spec", "LoadResult": "meshlab.load.driver",
    "Env": "meshlab.envs.base", "PodInfo": "meshlab.envs.base",
    "MeshlabError": "meshlab.errors", "ConfigError": "meshlab.errors",
    "LabError": "meshlab.errors",
}
#: Names whose attribute in the defining module differs from the public one.
_RENAMED = {"create_fault": "create"}

__all__ = ["__version__"] + sorted(_EXPORTS)  # noqa: PLE0605 - the names of _EXPORTS


def __getattr__(name: str) -> Any:
    """Load a public name on first use.

    Raises:
        AttributeError: ``name`` is not part of meshlab's public API.
    """
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'meshlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
