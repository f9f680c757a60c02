"""Captured-connection plumbing: the original destination and the per-protocol handler contract.

iptables REDIRECTs a pod's traffic to the capture listeners (15001 outbound, 15006 inbound);
:func:`original_dst` recovers where the connection was going, and a
:class:`ConnectionHandler` (HTTP or TCP) serves it once :class:`~meshlab.proxy.listeners.Sidecar` has
routed it to a cluster: the HTTP proxy as an asyncio Protocol per connection
(:meth:`~meshlab.proxy.http.conn.HttpProxy.connection`), the TCP proxy on asyncio streams
(:meth:`~meshlab.proxy.tcp.proxy.TcpProxy.serve`).
"""

from __future__ import annotations

import socket
import struct

from meshlab.proxy.accesslog import AccessLogWriter
from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.upstream.router import Address, Router

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_dst(sock: socket.socket) -> Address:
    """The pre-REDIRECT destination of an accepted socket (``getsockopt(SOL_IP, SO_ORIGINAL_DST)``).

    Raises:
        OSError: the connection was not NATed (ENOENT).
    """
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


class ConnectionHandler:
    """Serves the captured connections of one protocol for a sidecar.

    Args:
        config: the sidecar configuration (timeouts, retry policies).
        router: endpoint picker.
        stats: stat trees.
        own_peer: this pod's labels.
        access_log: where each request's or connection's record goes.
    """

    def __init__(self, config: SidecarConfig, router: Router, stats: ProxyStats,
                 own_peer: PeerInfo, access_log: AccessLogWriter) -> None:
        self.config = config
        self.router = router
        self.stats = stats
        self.own_peer = own_peer
        self.access_log = access_log

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pod={self.config.pod.name!r})"
