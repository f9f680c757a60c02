"""The asyncio layer's entry: capture listeners and per-connection dispatch.

This module, :mod:`~meshlab.proxy.capture`, :mod:`~meshlab.proxy.http.conn`,
:mod:`~meshlab.proxy.tcp.proxy`, :mod:`~meshlab.proxy.upstream.pool` and :mod:`~meshlab.proxy.admin.endpoints` are
the ones that touch sockets.
Protocol decisions live in :mod:`~meshlab.proxy.http.core`; :mod:`~meshlab.proxy.http.conn`
executes the actions a stream returns and reports socket events back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.capture import original_dst
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.http.conn import HttpProxy
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.stats.tcp_stats import TcpStatsTracker
from meshlab.proxy.tcp.proxy import TcpProxy
from meshlab.proxy.upstream.pool import READ_CHUNK, ConnectionPool
from meshlab.proxy.upstream.router import Router
from meshlab.proxy.upstream.sockopts import listen_socket


class Sidecar:
    """Owns listeners, pool, stats and access log of one sidecar process."""

    def __init__(self, config: SidecarConfig, stats: ProxyStats,
                 access_log: AccessLogWriter) -> None:
        self.config = config
        self.stats = stats
        self.access_log = access_log
        self.router = Router(config)
        self.pool = ConnectionPool()
        self.own_peer = PeerInfo.from_pod(config.pod)
        self.servers: list[asyncio.base_events.Server] = []
        self.listening: dict[int, asyncio.base_events.Server] = {}  # port → accepting server
        self._tasks: set[asyncio.Task[None]] = set()
        parts = (config, self.router, stats, self.own_peer, access_log)
        self.http = HttpProxy(*parts, self.pool)
        self.tcp = TcpProxy(*parts)
        self.tcp_stats = TcpStatsTracker(stats.store, config.tcp_stats_update_period_s)

    async def start(self, bind_ip: str = "0.0.0.0") -> None:
        """Start the 15001 and 15006 capture listeners."""
        ports = self.config.ports
        for port, handler in ((ports.outbound, self._on_outbound), (ports.inbound, self._on_inbound)):
            # EnvoyFilter LISTENER socket options (PREBIND/BOUND/LISTENING; ENVOY.md §8)
            sock = listen_socket(bind_ip, port, self.config.policies.listener_options(port))
            server = await asyncio.start_server(handler, sock=sock, limit=READ_CHUNK * 4)
            self.servers.append(server)
            self.listening[port] = server
        self.tcp_stats.start()

    def stop_listeners(self, inbound_only: bool = False) -> int:
        """Admin ``POST /drain_listeners``: close the listening sockets (ENVOY.md §5).

        ``inbound_only`` stops only virtualInbound (15006, traffic_direction INBOUND).
        Accepted connections carry on. Returns how many listeners were stopped now.
        """
        ports = [self.config.ports.inbound] + ([] if inbound_only else [self.config.ports.outbound])
        stopped = 0
        for port in ports:
            server = self.listening.pop(port, None)
            if server is not None:
                server.close()
                stopped += 1
        return stopped

    async def close(self) -> None:
        """Stop listening and close pooled connections."""
        for server in self.servers:
            server.close()
        self.pool.close_all()
        self.tcp_stats.stop()

    # -- accept ---------------------------------------------------------------------------------

    async def _on_outbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "outbound")

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "inbound")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      direction: str) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        listen_port = self.config.ports.outbound if direction == "outbound" else self.config.ports.inbound
        lstats = self.stats.listener(f"0.0.0.0_{listen_port}")
        lstats.downstream_cx_total.inc()
        lstats.downstream_cx_active.inc()
        self.tcp_stats.watch_transport(writer.transport, f"listener.0.0.0.0_{listen_port}.")
        start = time.monotonic()
        try:
            try:
                dst = original_dst(sock)
            except OSError:
                lstats.no_filter_chain_match.inc()
                return
            if dst[1] == listen_port or (dst[1] in (self.config.ports.outbound,
                                                    self.config.ports.inbound)
                                         and dst[0] in ("127.0.0.1", self.config.pod.ip)):
                lstats.no_filter_chain_match.inc()  # would loop into ourselves
                return
            cluster = self.router.outbound(dst) if direction == "outbound" else self.router.inbound(dst)
            remote = (peer[0], peer[1]) if peer else ("0.0.0.0", 0)
            if cluster.is_http:
                await self.http.serve(reader, writer, cluster, dst, remote)
            else:
                await self.tcp.serve(reader, writer, cluster, dst, remote)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not kill the proxy
            print(f"meshlab.proxy: {direction} connection error: {exc!r}", file=sys.stderr)
        finally:
            lstats.downstream_cx_active.dec()
            lstats.downstream_cx_destroy.inc()
            lstats.downstream_cx_length_ms.record((time.monotonic() - start) * 1000)
            with contextlib.suppress(Exception):
                writer.close()


    def __repr__(self) -> str:
        return f"Sidecar(pod={self.config.pod.name!r}, {self.pool!r})"
