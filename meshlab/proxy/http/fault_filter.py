"""HTTP fault injection as Envoy's fault filter applies a VirtualService ``fault`` (sans-IO).

Istio turns ``http[].fault`` into a per-route ``envoy.filters.http.fault`` config, so faults act
on the OUTBOUND side (the client's sidecar) before the router. Envoy's order
(``E:source/extensions/filters/http/fault/fault_filter.cc``):

1. Delay: chosen with probability ``percent``; ``http.<prefix>.fault.delays_injected++``,
   flag ``DI``, the request waits ``fixed_delay_s`` (``active_faults`` counts it), then goes on.
   The router (and its route timeout) starts only after the delay.
2. Abort (after any delay): chosen with probability ``percent``;
   ``http.<prefix>.fault.aborts_injected++``, flag ``FI`` and a local reply with the configured
   status, body ``fault filter abort`` and details ``fault_filter_abort``.

Istio writes percentages as a FractionalPercent per million; drawing ``rng() * 100 < percent``
is the same probability. ``rng`` is the stream context's source, so tests can seed it.
"""

from __future__ import annotations

from collections.abc import Callable

from meshlab.proxy.config.policy import RoutePolicy
from meshlab.proxy.flags import Flag, LocalReply
from meshlab.proxy.stats.store import StatsStore

FAULT_ABORT_BODY = "fault filter abort"
FAULT_ABORT_DETAILS = "fault_filter_abort"


def _chosen(percent: float, rng: Callable[[], float]) -> bool:
    if percent >= 100.0:
        return True
    if percent <= 0.0:
        return False
    return rng() * 100.0 < percent


def delay_s(policy: RoutePolicy, rng: Callable[[], float]) -> float | None:
    """The delay to inject for one request, or None (no delay configured or not chosen)."""
    if policy.delay is None or not _chosen(policy.delay.percent, rng):
        return None
    return policy.delay.fixed_delay_s


def abort_reply(policy: RoutePolicy, rng: Callable[[], float]) -> LocalReply | None:
    """The abort local reply for one request (flag ``FI``), or None."""
    if policy.abort is None or not _chosen(policy.abort.percent, rng):
        return None
    return LocalReply(policy.abort.http_status, FAULT_ABORT_BODY, FAULT_ABORT_DETAILS, Flag.FI)


class FaultStats:
    """``http.<stat_prefix>.fault.*`` of one HCM (Envoy fault filter stats).

    Args:
        store: the stats store.
        http_prefix: the HCM stat prefix including its trailing ``.`` (``HttpStats.prefix``).
    """

    def __init__(self, store: StatsStore, http_prefix: str) -> None:
        prefix = http_prefix + "fault."
        self.delays_injected = store.counter(prefix + "delays_injected")
        self.aborts_injected = store.counter(prefix + "aborts_injected")
        self.active_faults = store.gauge(prefix + "active_faults")

    def __repr__(self) -> str:
        return f"FaultStats({self.delays_injected.name!r})"


class FaultState:
    """The fault filter's per-stream state: decisions, stats and the ``active_faults`` gauge.

    Args:
        policy: the route policy (its ``delay`` and ``abort``).
        rng: uniform [0, 1) source.
        store: the stats store.
        http_prefix: the HCM stat prefix with its trailing ``.``.
    """

    def __init__(self, policy: RoutePolicy, rng: Callable[[], float], store: StatsStore,
                 http_prefix: str) -> None:
        self.policy = policy
        self._rng = rng
        self._store = store
        self._prefix = http_prefix
        self.delaying = False

    def _stats(self) -> FaultStats:
        return FaultStats(self._store, self._prefix)

    def delay_s(self) -> float | None:
        """Decide the delay; when chosen, count it and hold ``active_faults`` until :meth:`end_delay`."""
        if self.policy.delay is None:
            return None
        delay = delay_s(self.policy, self._rng)
        if delay is not None:
            stats = self._stats()
            stats.delays_injected.inc()
            stats.active_faults.inc()
            self.delaying = True
        return delay

    def end_delay(self) -> None:
        """The delay ended (elapsed, or the stream ended first); idempotent."""
        if self.delaying:
            self.delaying = False
            self._stats().active_faults.dec()

    def abort_reply(self) -> LocalReply | None:
        """Decide the abort; when chosen, count it and return the ``FI`` reply."""
        if self.policy.abort is None:
            return None
        reply = abort_reply(self.policy, self._rng)
        if reply is not None:
            self._stats().aborts_injected.inc()
        return reply

    def __repr__(self) -> str:
        return f"FaultState(delay={self.policy.delay}, abort={self.policy.abort})"
