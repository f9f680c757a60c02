"""The fault registry: every fault class by its registry key (its ``name``), for ``create``, the
deadman, ``meshlab down`` and the chaostoolkit actions. A fault's module is named after its key
(``reject-connections`` → :mod:`meshlab.faults.reject_connections`); a new fault is added to
:data:`FAULTS` here.
"""

from __future__ import annotations

from typing import Any

from meshlab.errors import ConfigError
from meshlab.faults.bandwidth import Bandwidth
from meshlab.faults.conntrack_delete import ConntrackDelete
from meshlab.faults.conntrack_timeouts import ConntrackTimeouts
from meshlab.faults.container_pause import ContainerPause
from meshlab.faults.cpu_limit import CpuLimit
from meshlab.faults.cpu_stress import CpuStress
from meshlab.faults.dns_error import DnsError
from meshlab.faults.half_close import HalfClose
from meshlab.faults.http_fault import HttpFault
from meshlab.faults.network_delay import NetworkDelay
from meshlab.faults.network_partition import NetworkPartition
from meshlab.faults.node_poweroff import NodePowerOff
from meshlab.faults.packet_drop import PacketDrop
from meshlab.faults.pod_kill import PodKill
from meshlab.faults.protocol import Fault
from meshlab.faults.reject_connections import RejectConnections

#: Fault classes by registry key.
FAULTS: dict[str, type] = {cls.name: cls for cls in (  # type: ignore[attr-defined]
    Bandwidth, ConntrackDelete, ConntrackTimeouts, ContainerPause, CpuLimit, CpuStress, DnsError,
    HalfClose, HttpFault, NetworkDelay, NetworkPartition, NodePowerOff, PacketDrop, PodKill,
    RejectConnections)}


def create(name: str, **params: Any) -> Fault:
    """Instantiate a fault by its registry key.

    Raises:
        ConfigError: unknown fault name or bad parameters.
    """
    if name not in FAULTS:
        raise ConfigError(f"unknown fault {name!r} (known: {', '.join(sorted(FAULTS))})")
    try:
        return FAULTS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"fault {name!r}: {exc}") from exc
