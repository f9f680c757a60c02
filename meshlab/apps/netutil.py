"""Socket helpers shared by meshlab's apps: fortio-style listen specs and Go's socket defaults.

Go's ``net`` package enables TCP keep-alive (15 s idle, 15 s interval, 9 probes) on every dialed
and accepted connection unless told otherwise; fortio keeps that default. The chaos suites rely
on these timers (half-open connections after a node power-off), so the apps copy them.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from meshlab.errors import ConfigError

GO_KEEPALIVE_IDLE_S = 15
GO_KEEPALIVE_INTERVAL_S = 15
GO_KEEPALIVE_COUNT = 9
DISABLED = "disabled"


@dataclass(frozen=True)
class ListenSpec:
    """Where to listen, parsed from fortio's port syntax.

    Attributes:
        host: address to bind; ``None`` binds every interface.
        port: TCP/UDP port (0 picks a free one).
    """

    host: str | None
    port: int

    def __str__(self) -> str:
        return format_addr(self.host or "", self.port)


def parse_listen_spec(flag: str, value: str) -> ListenSpec | None:
    """Parse fortio's ``port``, ``:port``, ``host:port``, ``[v6]:port`` or ``disabled``.

    Args:
        flag: the flag name, for error messages (e.g. ``-http-port``).
        value: the flag value.

    Returns:
        The spec, or ``None`` for ``disabled``.

    Raises:
        ConfigError: unparsable value, or a Unix domain socket path (not supported).
    """
    if value == DISABLED:
        return None
    if "/" in value:
        raise ConfigError(f"{flag} {value!r}: Unix domain sockets are not supported by meshlab")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{flag} {value!r}: expected port, :port, host:port or {DISABLED!r}")
    return ListenSpec(host or None, int(port_text))


def format_addr(host: str, port: int) -> str:
    """``host:port`` as Go prints it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_addr(name: object) -> str:
    """Go-style ``ip:port`` of a ``getpeername()`` result (``str()`` of anything else)."""
    if isinstance(name, tuple) and len(name) >= 2:
        return format_addr(str(name[0]), int(name[1]))
    return str(name)


def set_go_keepalive(sock: Any) -> None:
    """Enable TCP keep-alive with Go's default timers on ``sock`` (no-op for non-TCP).

    Args:
        sock: a ``socket.socket`` or asyncio's ``TransportSocket``
            (``transport.get_extra_info("socket")``), or ``None``.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", GO_KEEPALIVE_IDLE_S),
                          ("TCP_KEEPINTVL", GO_KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", GO_KEEPALIVE_COUNT)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
