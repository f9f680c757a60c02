"""Per-host (endpoint) counters of one cluster, as Envoy's ``HostStats`` (sans-IO; ENVOY.md §5).

Envoy keeps these per upstream host, outside the stats store (so the Istio stats matcher never
hides them) and shows them only in admin ``/clusters``. Who moves them (Envoy source):

- ``cx_total`` / ``cx_active``: the connection pool, when a connection is created / closed.
- ``cx_connect_fail``: a connect attempt that failed (refused, timeout, unreachable).
- ``rq_total`` / ``rq_active``: a request stream on a connection to the host.
- ``rq_success`` / ``rq_error``: the router's ``chargeUpstreamCode``: 5xx and retried
  responses are errors, other final responses successes.
- ``rq_timeout``: the router's route / per-try timeout fired for a request to the host.
"""

from __future__ import annotations

from collections.abc import Iterator

Address = tuple[str, int]

#: Counter and gauge names in the order ``/clusters`` prints them (alphabetical, as Envoy's map).
HOST_STAT_NAMES = ("cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error",
                   "rq_success", "rq_timeout", "rq_total")
#: The gauges among :data:`HOST_STAT_NAMES` (the rest are counters).
HOST_GAUGES = ("cx_active", "rq_active")


class HostStats:
    """Counters of one upstream host; plain ints, updated with ``+=`` on the hot path."""

    __slots__ = HOST_STAT_NAMES
    cx_active: int
    cx_connect_fail: int
    cx_total: int
    rq_active: int
    rq_error: int
    rq_success: int
    rq_timeout: int
    rq_total: int

    def __init__(self) -> None:
        for name in HOST_STAT_NAMES:
            setattr(self, name, 0)

    def items(self) -> list[tuple[str, int]]:
        """``(name, value)`` in :data:`HOST_STAT_NAMES` order."""
        return [(n, getattr(self, n)) for n in HOST_STAT_NAMES]

    def reset_counters(self) -> None:
        """Admin ``POST /reset_counters``: zero the counters, keep the gauges."""
        for name in HOST_STAT_NAMES:
            if name not in HOST_GAUGES:
                setattr(self, name, 0)

    def __repr__(self) -> str:
        return "HostStats(" + ", ".join(f"{k}={v}" for k, v in self.items() if v) + ")"


class HostStatsRegistry:
    """The :class:`HostStats` of one cluster, keyed by ``(ip, port)``, created on first use."""

    def __init__(self) -> None:
        self._hosts: dict[Address, HostStats] = {}

    def get(self, address: Address) -> HostStats:
        """Stats of ``address`` (created empty if new)."""
        hs = self._hosts.get(address)
        if hs is None:
            hs = self._hosts[address] = HostStats()
        return hs

    def known(self, address: Address) -> bool:
        """True when ``address`` has stats already."""
        return address in self._hosts

    def __iter__(self) -> Iterator[tuple[Address, HostStats]]:
        return iter(list(self._hosts.items()))

    def __len__(self) -> int:
        return len(self._hosts)

    def reset_counters(self) -> None:
        """Zero every host's counters."""
        for hs in self._hosts.values():
            hs.reset_counters()

    def __repr__(self) -> str:
        return f"HostStatsRegistry(hosts={len(self._hosts)})"
