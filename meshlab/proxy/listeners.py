"""The asyncio layer's entry: capture listeners and per-connection dispatch.

Each capture listener is a ``loop.create_server`` whose accepted connections are routed in
``connection_made`` (original destination → cluster) and handed to the HTTP proxy's Protocol or
the TCP proxy, with one driver task per connection. This module,
:mod:`~meshlab.proxy.capture`, :mod:`~meshlab.proxy.http.downstream`,
:mod:`~meshlab.proxy.http.conn`, :mod:`~meshlab.proxy.tcp.proxy`,
:mod:`~meshlab.proxy.upstream.connection` and :mod:`~meshlab.proxy.admin.server` are the ones that
touch sockets.
Protocol decisions live in :mod:`~meshlab.proxy.http.core`; :mod:`~meshlab.proxy.http.conn`
executes the actions a stream returns and reports socket events back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.capture import original_dst
from meshlab.proxy.cells import LOCAL, Cells
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.http.conn import HttpProxy
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.stats.tcp_stats import TcpStatsTracker
from meshlab.proxy.tcp.proxy import TcpProxy
from meshlab.proxy.upstream.pool import ConnectionPool
from meshlab.proxy.upstream.router import Router
from meshlab.proxy.upstream.sockopts import listen_socket

#: A bound capture listener: ``(port, direction, listening socket)``.
Listener = tuple[int, str, socket.socket]


def bind_listeners(config: SidecarConfig, bind_ip: str = "0.0.0.0",
                   reuse_port: bool = False) -> list[Listener]:
    """Bind the 15001 (outbound) and 15006 (inbound) capture listeners.

    Args:
        config: the sidecar config (ports, EnvoyFilter listener socket options).
        bind_ip: address to bind.
        reuse_port: set ``SO_REUSEPORT`` so each worker binds its own socket on the same port
            and the kernel spreads new connections over them (Envoy's workers share a listen
            socket instead; the load spreading is the kernel's in both cases).

    Raises:
        OSError: a port cannot be bound (the ones bound so far are closed).
    """
    ports = config.ports
    out: list[Listener] = []
    try:
        for port, direction in ((ports.outbound, "outbound"), (ports.inbound, "inbound")):
            # EnvoyFilter LISTENER socket options (PREBIND/BOUND/LISTENING; ENVOY.md §8)
            sock = listen_socket(bind_ip, port, config.policies.listener_options(port),
                                 reuse_port=reuse_port)
            out.append((port, direction, sock))
    except BaseException:
        for _, _, sock in out:
            sock.close()
        raise
    return out


class Sidecar:
    """Owns listeners, pool, stats and access log of one sidecar process (or one worker).

    Args:
        config: the sidecar config.
        stats: this process's stat trees.
        access_log: where finished requests and connections are logged.
        cells: circuit-breaker and outlier state, shared with the other workers
            (:mod:`meshlab.proxy.cells`); private by default.
    """

    def __init__(self, config: SidecarConfig, stats: ProxyStats,
                 access_log: AccessLogWriter, cells: Cells = LOCAL) -> None:
        self.config = config
        self.stats = stats
        self.access_log = access_log
        self.router = Router(config)
        self.pool = ConnectionPool()
        self.own_peer = PeerInfo.from_pod(config.pod)
        self.servers: list[asyncio.base_events.Server] = []
        self.listening: dict[int, asyncio.base_events.Server] = {}  # port → accepting server
        self._tasks: set[asyncio.Task[None]] = set()
        self.router.outliers.bind(stats, cells)
        parts = (config, self.router, stats, self.own_peer, access_log)
        self.http = HttpProxy(*parts, self.pool, cells)
        self.tcp = TcpProxy(*parts)
        self.tcp_stats = TcpStatsTracker(stats.store, config.tcp_stats_update_period_s)

    async def start(self, bind_ip: str = "0.0.0.0") -> None:
        """Bind and start the 15001 and 15006 capture listeners.

        Raises:
            OSError: a port cannot be bound.
        """
        await self.serve(bind_listeners(self.config, bind_ip))

    async def serve(self, listeners: list[Listener]) -> None:
        """Accept on already bound capture listeners (a worker's share of them)."""
        loop = asyncio.get_running_loop()
        for port, direction, sock in listeners:
            server = await loop.create_server(
                functools.partial(_Accepted, self, direction, port), sock=sock)
            self.servers.append(server)
            self.listening[port] = server
        self.tcp_stats.start()

    def reload(self, config: SidecarConfig) -> None:
        """Take a pushed config (routes, policies, endpoints; listeners and ports stay as
        bound): open connections keep going and route their next request by it
        (:meth:`~meshlab.proxy.upstream.router.Router.update`)."""
        self.config = config
        self.http.config = config
        self.tcp.config = config
        self.router.update(config)

    def is_ejected(self, cluster: str, host: tuple[str, int]) -> bool:
        """Whether outlier detection has ejected ``host`` of ``cluster`` (``/clusters``)."""
        return self.router.outliers.is_ejected(cluster, host)

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

    def accepted(self, transport: asyncio.Transport, direction: str, listen_port: int) -> None:
        """A captured connection: route it, hand it to the HTTP or TCP proxy, account for it.

        Raises nothing: a connection that cannot be served is closed (``no_filter_chain_match``
        when it was not redirected, or would loop into the sidecar itself).
        """
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        prefix = f"listener.0.0.0.0_{listen_port}."
        lstats = self.stats.listener(f"0.0.0.0_{listen_port}")
        lstats.downstream_cx_total.inc()
        lstats.downstream_cx_active.inc()
        start = time.monotonic()
        try:
            dst = original_dst(sock)
        except OSError:
            dst = None
        ports = self.config.ports
        if dst is None or dst[1] == listen_port or (
                dst[1] in (ports.outbound, ports.inbound)
                and dst[0] in ("127.0.0.1", self.config.pod.ip)):  # would loop into ourselves
            self.tcp_stats.watch_transport(transport, prefix)
            lstats.no_filter_chain_match.inc()
            self._closed(lstats, start, transport)
            return
        cluster = self.router.outbound(dst) if direction == "outbound" else self.router.inbound(dst)
        remote = (peer[0], peer[1]) if peer else ("0.0.0.0", 0)
        loop = asyncio.get_running_loop()
        if cluster.is_http:
            proto = self.http.connection(cluster, dst, remote)
            transport.set_protocol(proto)
            proto.connection_made(transport)
            work = proto.serve()
        else:
            relay = self.tcp.relay(cluster)
            transport.set_protocol(relay.downstream)
            relay.downstream.connection_made(transport)
            work = self.tcp.serve(relay, cluster, dst, remote)
        self.tcp_stats.watch_transport(transport, prefix)
        task = loop.create_task(self._serve(work, direction, lstats, start, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, work: Coroutine[Any, Any, None], direction: str, lstats: Any,
                     start: float, transport: asyncio.Transport) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - one bad connection must not kill the proxy
            print(f"meshlab.proxy: {direction} connection error: {exc!r}", file=sys.stderr)
        finally:
            self._closed(lstats, start, transport)

    @staticmethod
    def _closed(lstats: Any, start: float, transport: asyncio.Transport) -> None:
        lstats.downstream_cx_active.dec()
        lstats.downstream_cx_destroy.inc()
        lstats.downstream_cx_length_ms.record((time.monotonic() - start) * 1000)
        with contextlib.suppress(Exception):
            transport.close()

    def __repr__(self) -> str:
        return f"Sidecar(pod={self.config.pod.name!r}, {self.pool!r})"


class _Accepted(asyncio.Protocol):
    """A just-accepted connection; :meth:`Sidecar.accepted` swaps in the serving protocol."""

    def __init__(self, sidecar: Sidecar, direction: str, listen_port: int) -> None:
        self.sidecar = sidecar
        self.direction = direction
        self.listen_port = listen_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sidecar.accepted(transport, self.direction, self.listen_port)  # type: ignore[arg-type]
