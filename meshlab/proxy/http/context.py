"""Per-connection context and phases of the HTTP stream machine (sans-IO; see :mod:`.http_core`)."""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshlab.proxy.config.sidecar import RetrySettings
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.upstream.router import Address, Cluster, Router


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


class Deadlines:
    """The route and per-try deadlines of one stream (``clock`` time in s, None = not running).

    Args:
        clock: the time source of the deadlines (the event loop's ``time``).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.route: float | None = None
        self.per_try: float | None = None
        self._route_started = False

    def start_route(self, timeout_s: float | None) -> None:
        """Arm the route deadline once (at the router's first attempt)."""
        if not self._route_started:
            self._route_started = True
            self.route = self._clock() + timeout_s if timeout_s else None

    def start_per_try(self, timeout_s: float | None) -> None:
        """Arm (or clear) the per-try deadline for the attempt whose connection is ready."""
        self.per_try = self._clock() + timeout_s if timeout_s else None

    def next(self) -> tuple[float | None, str]:
        """(the earliest deadline or None, ``"per_try"`` or ``"route"``)."""
        if self.per_try is not None and (self.route is None or self.per_try < self.route):
            return self.per_try, "per_try"
        return self.route, "route"

    def __repr__(self) -> str:
        return f"Deadlines(route={self.route}, per_try={self.per_try})"
