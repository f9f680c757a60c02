"""Captured TCP (non-HTTP) connections: Envoy's ``tcp_proxy`` filter as Istio configures it.

Rules (ENVOY.md §1, §3, §7, §8; ``E:source/common/tcp_proxy/tcp_proxy.cc``):

- One connect attempt (``max_connect_attempts`` 1): a failure logs ``UF,URX`` and charges
  ``upstream_cx_connect_attempts_exceeded``; a cluster without endpoints (``BlackHoleCluster``
  under ``REGISTRY_ONLY``) logs ``UH``, charges ``upstream_cx_none_healthy`` and closes the
  downstream at once.
- Half-close (``enableHalfClose(true)``): a FIN read from one side is forwarded to the other as
  ``shutdown(SHUT_WR)`` once that side's write buffer is flushed (asyncio ``write_eof``), and
  the other direction keeps relaying. There is no FIN-WAIT/half-close timer: only
  ``idle_timeout`` limits a half-open session.
- Both FINs relayed → both sockets close after flushing. Upstream reset → the downstream is
  closed with FlushWrite. Downstream reset → the upstream is closed with FlushWrite; while it
  still has unsent bytes it is a "Drainer" (``upstream_flush_total``, ``upstream_flush_active``).
- ``idle_timeout`` (cluster ``policy.tcp_idle_timeout_s``, default 1 h, 0 disables): no bytes
  read or flushed in either direction for that long → ``tcp.<prefix>.idle_timeout++`` and both
  sides close NoFlush. Envoy records the reason ``tcp_session_idle_timeout`` only as the local
  close reason, so ``%CONNECTION_TERMINATION_DETAILS%`` stays ``-`` and no flag is set.
- Stats: ``tcp.<cluster name>.`` (Istio's stat prefix; no ``;`` delimiter; ``BlackHoleCluster``
  for the blackhole chain), cluster ``upstream_cx_*`` and Istio's ``istio_tcp_*`` (opened at
  start, byte deltas on the 5 s report and at close, closed at close).
"""

from __future__ import annotations

import asyncio
import time

from meshlab.proxy.accesslog import AccessRecord, format_address
from meshlab.proxy.capture import ConnectionHandler
from meshlab.proxy.flags import Flag, ResponseFlags
from meshlab.proxy.stats.metrics import ClusterStats, DestinationService, PeerInfo
from meshlab.proxy.stats.store import StatsStore
from meshlab.proxy.stats.trees import StatTree
from meshlab.proxy.tcp.relay import Outcome, Relay
from meshlab.proxy.upstream.connection import ConnectFailure, open_tcp
from meshlab.proxy.upstream.router import Address, Cluster


class TcpProxyStats(StatTree):
    """``tcp.<stat_prefix>.*`` of one TCP proxy (ENVOY.md §3)."""

    COUNTERS = (
        "downstream_cx_total", "downstream_cx_no_route", "downstream_cx_tx_bytes_total",
        "downstream_cx_rx_bytes_total", "downstream_flow_control_paused_reading_total",
        "downstream_flow_control_resumed_reading_total", "idle_timeout",
        "max_downstream_connection_duration", "upstream_flush_total",
    )
    GAUGES = ("downstream_cx_tx_bytes_buffered", "downstream_cx_rx_bytes_buffered",
              "upstream_flush_active")

    def __init__(self, store: StatsStore, stat_prefix: str) -> None:
        super().__init__(store, f"tcp.{stat_prefix}.")


class TcpProxy(ConnectionHandler):
    """Serves captured TCP connections of one sidecar (see the module rules)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._trees: dict[str, TcpProxyStats] = {}

    def tcp_stats(self, stat_prefix: str) -> TcpProxyStats:
        """The ``tcp.<stat_prefix>.`` tree (created once per prefix)."""
        tree = self._trees.get(stat_prefix)
        if tree is None:
            tree = self._trees[stat_prefix] = TcpProxyStats(self.stats.store, stat_prefix)
        return tree

    @staticmethod
    def relay(cluster: Cluster) -> Relay:
        """The relay for a new connection to ``cluster``; put its ``downstream`` protocol on the
        accepted transport, then run :meth:`serve`."""
        return Relay(idle_timeout_s=cluster.policy.tcp_idle_timeout_s)

    async def serve(self, relay: Relay, cluster: Cluster, dst: Address, remote: Address) -> None:
        """Connect ``relay`` to an endpoint of ``cluster``, relay until the session ends, then
        log it (the downstream side of ``relay`` is already on the accepted transport)."""
        start_wall, start = time.time(), time.monotonic()
        cstats = self.stats.cluster(cluster.name)
        tstats = self.tcp_stats(cluster.name)
        tstats.downstream_cx_total.inc()
        flags = ResponseFlags()
        endpoint = self.router.pick(cluster)
        local: Address | None = None
        transport_failure: str | None = None
        report = self.stats.istio.open_tcp(self._tags(cluster, "-"))
        relay.count_with(lambda n: _rx(n, tstats, cstats, report),
                         lambda n: _tx(n, tstats, cstats, report))
        connected = False
        try:
            if endpoint is None:
                flags.add(Flag.UH)
                cstats.upstream_cx_none_healthy.inc()
                return
            timeout_s = cluster.policy.connect_timeout_s or self.config.connect_timeout_s
            try:
                up_transport = await open_tcp(endpoint, cluster.bind_ip, timeout_s, cstats,
                                              lambda: relay.upstream, cluster.policy)
            except ConnectFailure as exc:
                flags.add(Flag.UF)
                flags.add(Flag.URX)  # max_connect_attempts 1 → UF,URX
                cstats.upstream_cx_connect_attempts_exceeded.inc()
                transport_failure = exc.transport_failure or None
                return
            connected = True
            up_start = time.monotonic()
            sockname = up_transport.get_extra_info("sockname")
            local = (sockname[0], sockname[1]) if sockname else None
            outcome = await relay.run()
            if outcome is Outcome.IDLE_TIMEOUT:
                tstats.idle_timeout.inc()
            self._upstream_done(relay, outcome, cstats, tstats, endpoint, up_start)
        finally:
            if flags:
                report.tags = self._tags(cluster, str(flags))
            self.stats.istio.close_tcp(report)
            self.access_log.write(AccessRecord(
                start_time_s=start_wall, route_name=None, method=None, path=None, protocol=None,
                response_code=0, response_flags=str(flags), response_code_details=None,
                connection_termination_details=None,
                upstream_transport_failure_reason=(transport_failure.replace(" ", "_")
                                                   if transport_failure else None),
                bytes_received=relay.rx_bytes if connected else 0,
                bytes_sent=relay.tx_bytes if connected else 0,
                duration_ms=int((time.monotonic() - start) * 1000), upstream_service_time=None,
                x_forwarded_for=None, user_agent=None, request_id=None, authority=None,
                upstream_host=format_address(endpoint), upstream_cluster=cluster.name,
                upstream_local_address=format_address(local),
                downstream_local_address=format_address(dst),
                downstream_remote_address=format_address(remote)))

    def _upstream_done(self, relay: Relay, outcome: Outcome, cstats: ClusterStats,
                       tstats: TcpProxyStats, endpoint: Address, up_start: float) -> None:
        """Cluster close accounting, or hand the upstream to a Drainer while it flushes."""
        remote = outcome is Outcome.UPSTREAM_RESET or (
            outcome is Outcome.BOTH_CLOSED and relay.last_fin == "upstream")

        def closed() -> None:
            cstats.connection_closed(endpoint, remote=remote,
                                     length_ms=(time.monotonic() - up_start) * 1000)

        if relay.draining is None:
            closed()
            return
        tstats.upstream_flush_total.inc()
        tstats.upstream_flush_active.inc()

        def drained(_: asyncio.Future[None]) -> None:
            tstats.upstream_flush_active.dec()
            closed()

        relay.draining.add_done_callback(drained)

    def _tags(self, cluster: Cluster, response_flags: str):  # type: ignore[no-untyped-def]
        svc = DestinationService(cluster.destination_service, cluster.destination_service_name,
                                 cluster.destination_service_namespace)
        unknown = PeerInfo()
        if cluster.direction == "outbound":
            return self.stats.istio.labels("source", self.own_peer, unknown, svc, "tcp", None,
                                           response_flags, "unknown")
        return self.stats.istio.labels("destination", unknown, self.own_peer, svc, "tcp", None,
                                       response_flags, "none")


def _rx(n: int, tstats: TcpProxyStats, cstats: ClusterStats, report) -> None:  # type: ignore[no-untyped-def]
    """``n`` bytes read from the downstream (and written upstream)."""
    tstats.downstream_cx_rx_bytes_total.inc(n)
    cstats.upstream_cx_tx_bytes_total.inc(n)
    report.received += n


def _tx(n: int, tstats: TcpProxyStats, cstats: ClusterStats, report) -> None:  # type: ignore[no-untyped-def]
    """``n`` bytes read from the upstream (and written downstream)."""
    tstats.downstream_cx_tx_bytes_total.inc(n)
    cstats.upstream_cx_rx_bytes_total.inc(n)
    report.sent += n
