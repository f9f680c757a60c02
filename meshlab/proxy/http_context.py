"""Per-connection context and phases of the HTTP stream machine (sans-IO; see :mod:`.http_core`)."""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshlab.proxy.config import RetrySettings
from meshlab.proxy.metrics import PeerInfo, ProxyStats
from meshlab.proxy.router import Address, Cluster, Router


class Phase(enum.Enum):
    """Where a stream is in the rules table."""

    REQUEST = "request"
    FAULT_DELAY = "fault_delay"
    CONNECTING = "connecting"
    BACKOFF = "backoff"
    WAITING = "waiting"
    RESPONDING = "responding"
    DONE = "done"


@dataclass
class StreamContext:
    """Per-connection facts a stream needs (built once per downstream connection).

    Attributes:
        cluster: routing decision for the connection's original destination.
        router: endpoint picker.
        stats: stat trees.
        own_peer: this pod's labels.
        connect_timeout_s: cluster connect timeout (DR ``connectTimeout`` or the sidecar's).
        route_timeout_s: route timeout, None = disabled (Istio default).
        retry: the route's retry policy, or None.
        downstream_local: original destination (``%DOWNSTREAM_LOCAL_ADDRESS%``).
        downstream_remote: the client address.
        rng: uniform [0, 1) source for backoff jitter and fault percentages (seedable).
    """

    cluster: Cluster
    router: Router
    stats: ProxyStats
    own_peer: PeerInfo
    connect_timeout_s: float
    route_timeout_s: float | None
    retry: RetrySettings | None
    downstream_local: Address
    downstream_remote: Address
    rng: Callable[[], float] = field(default=random.random)
    clock: Callable[[], float] = field(default=time.monotonic)
    wall: Callable[[], float] = field(default=time.time)

    @property
    def direction(self) -> str:
        """``outbound`` or ``inbound``."""
        return self.cluster.direction

    @property
    def server_name(self) -> bytes:
        """HCM ``server_name`` Istio configures for this direction."""
        return b"istio-envoy" if self.cluster.direction == "inbound" else b"envoy"
