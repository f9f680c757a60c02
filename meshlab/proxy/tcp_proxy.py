"""Captured TCP (non-HTTP) connections: Envoy's ``tcp_proxy`` to one endpoint, plain relay.

Stats follow Envoy's ``tcp.<cluster>.`` tree and Istio's TCP metrics; the access-log record has
no HTTP fields and ``UF,URX`` when the single connect attempt fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from meshlab.proxy.accesslog import AccessRecord, format_address
from meshlab.proxy.capture import ConnectionHandler
from meshlab.proxy.flags import Flag, ResponseFlags
from meshlab.proxy.metrics import DestinationService, PeerInfo
from meshlab.proxy.pool import READ_CHUNK, ConnectFailure, open_upstream
from meshlab.proxy.router import Address, Cluster


class TcpProxy(ConnectionHandler):
    """Serves captured TCP connections of one sidecar (one connect attempt, no retries)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    cluster: Cluster, dst: Address, remote: Address) -> None:
        """Relay one downstream connection to an endpoint of ``cluster``, then log it."""
        start_wall, start = time.time(), time.monotonic()
        cstats = self.stats.cluster(cluster.name)
        tcp_prefix = f"tcp.{cluster.name}."
        store = self.stats.store
        store.counter(tcp_prefix + "downstream_cx_total").inc()
        flags = ResponseFlags()
        endpoint = self.router.pick(cluster)
        local: Address | None = None
        transport = None
        up_bytes = down_bytes = 0
        tags = self._tags(cluster)
        self.stats.istio.record_tcp(tags, opened=True)
        try:
            if endpoint is None:
                flags.add(Flag.UH)
                return
            try:
                up_reader, up_writer = await open_upstream(endpoint, cluster.bind_ip,
                                                           self.config.connect_timeout_s, cstats)
            except ConnectFailure as exc:
                flags.add(Flag.UF)
                flags.add(Flag.URX)  # max_connect_attempts 1 → UF,URX
                cstats.counter("upstream_cx_connect_attempts_exceeded").inc()
                transport = exc.transport_failure or None
                return
            sockname = up_writer.get_extra_info("sockname")
            local = (sockname[0], sockname[1]) if sockname else None
            up_bytes, down_bytes = await relay_tcp(reader, writer, up_reader, up_writer)
            cstats.upstream_cx_active.dec()
            cstats.upstream_cx_destroy.inc()  # type: ignore[attr-defined]
            store.counter(tcp_prefix + "downstream_cx_rx_bytes_total").inc(up_bytes)
            store.counter(tcp_prefix + "downstream_cx_tx_bytes_total").inc(down_bytes)
        finally:
            self.stats.istio.record_tcp(tags, closed=True, sent_bytes=down_bytes,
                                        received_bytes=up_bytes)
            self.access_log.write(AccessRecord(
                start_time_s=start_wall, route_name=None, method=None, path=None, protocol=None,
                response_code=0, response_flags=str(flags), response_code_details=None,
                connection_termination_details=None,
                upstream_transport_failure_reason=transport.replace(" ", "_") if transport else None,
                bytes_received=up_bytes, bytes_sent=down_bytes,
                duration_ms=int((time.monotonic() - start) * 1000), upstream_service_time=None,
                x_forwarded_for=None, user_agent=None, request_id=None, authority=None,
                upstream_host=format_address(endpoint), upstream_cluster=cluster.name,
                upstream_local_address=format_address(local),
                downstream_local_address=format_address(dst),
                downstream_remote_address=format_address(remote)))

    def _tags(self, cluster: Cluster):  # type: ignore[no-untyped-def]
        svc = DestinationService(cluster.destination_service, cluster.destination_service_name,
                                 cluster.destination_service_namespace)
        unknown = PeerInfo()
        if cluster.direction == "outbound":
            return self.stats.istio.labels("source", self.own_peer, unknown, svc, "tcp", None,
                                           "-", "unknown")
        return self.stats.istio.labels("destination", unknown, self.own_peer, svc, "tcp", None,
                                       "-", "none")


async def relay_tcp(down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
                    ) -> tuple[int, int]:
    """Plain bidirectional relay; a FIN is forwarded as ``shutdown(SHUT_WR)`` to the other side.

    Kept small on purpose: a later issue replaces it with Envoy's exact half-close semantics
    (no FIN-WAIT-2 timer, TCP proxy ``idle_timeout``; ENVOY.md §8).

    Returns:
        (bytes downstream→upstream, bytes upstream→downstream).
    """
    counts = [0, 0]

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, idx: int) -> None:
        try:
            while True:
                data = await src.read(READ_CHUNK)
                if not data:
                    break
                counts[idx] += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof() and not dst.is_closing():
                    dst.write_eof()

    try:
        await asyncio.gather(pump(down_reader, up_writer, 0), pump(up_reader, down_writer, 1))
    finally:
        with contextlib.suppress(Exception):
            up_writer.close()
    return counts[0], counts[1]
