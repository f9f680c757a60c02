"""Socket options on the sidecar's own sockets: Envoy ``SocketOption`` and ``TcpKeepalive``.

Rules (ENVOY.md §8; ``E:source/common/network/socket_option_impl.cc``,
``socket_option_factory.cc``):

- A :class:`~meshlab.proxy.config.policy.SocketOption` is a plain ``setsockopt(level, name,
  int_value)`` applied in its ``state``: ``STATE_PREBIND`` before bind/connect, ``STATE_BOUND``
  right after bind, ``STATE_LISTENING`` after ``listen()`` (listener sockets only; Linux hands
  options such as ``TCP_USER_TIMEOUT`` (6/18, ms) on to accepted sockets).
- Upstream sockets get the cluster's PREBIND and BOUND options and its keepalive before
  ``connect()`` (Envoy turns ``upstream_connection_options.tcp_keepalive`` into PREBIND options).
- ``TcpKeepalive`` sets ``SO_KEEPALIVE`` and, only for the fields that are set,
  ``TCP_KEEPCNT`` (probes), ``TCP_KEEPIDLE`` (time, s) and ``TCP_KEEPINTVL`` (interval, s);
  unset fields keep the kernel's values (Linux 9 / 7200 s / 75 s).
- Istio sets neither by default; a DestinationRule ``tcpKeepalive`` or an EnvoyFilter adds them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from meshlab.proxy.config.policy import ClusterPolicy, SocketOption, TcpKeepalive

UPSTREAM_STATES = ("STATE_PREBIND", "STATE_BOUND")


class SocketOptionError(OSError):
    """``setsockopt`` refused an option (bad level/name/value or missing privilege)."""


def apply_options(sock: socket.socket, options: Iterable[SocketOption],
                  states: tuple[str, ...]) -> int:
    """``setsockopt`` every option whose state is in ``states``, in order.

    Args:
        sock: the socket.
        options: Envoy socket options (integer values).
        states: the states to apply now, e.g. ``("STATE_PREBIND",)``.

    Returns:
        How many options were applied.

    Raises:
        SocketOptionError: the kernel refused one (the message names level, name and value).
    """
    n = 0
    for o in options:
        if o.state not in states:
            continue
        try:
            sock.setsockopt(o.level, o.name, o.int_value)
        except OSError as exc:
            raise SocketOptionError(exc.errno, f"setsockopt(level={o.level}, name={o.name}, "
                                               f"value={o.int_value}): {exc.strerror}") from None
        n += 1
    return n


def apply_keepalive(sock: socket.socket, keepalive: TcpKeepalive) -> None:
    """Enable TCP keepalive with the set fields of ``keepalive`` (seconds / probe count).

    Raises:
        SocketOptionError: the kernel refused a value.
    """
    opts = [SocketOption(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for value, name in ((keepalive.probes, socket.TCP_KEEPCNT),
                        (keepalive.time_s, socket.TCP_KEEPIDLE),
                        (keepalive.interval_s, socket.TCP_KEEPINTVL)):
        if value is not None:
            opts.append(SocketOption(socket.IPPROTO_TCP, name, value))
    apply_options(sock, opts, ("STATE_PREBIND",))


def prepare_upstream(sock: socket.socket, policy: ClusterPolicy) -> None:
    """Apply a cluster's socket options and keepalive to an upstream socket before connect.

    Raises:
        SocketOptionError: an option was refused (Envoy closes such a connection as a local
            connection failure).
    """
    if policy.tcp_keepalive is not None:
        apply_keepalive(sock, policy.tcp_keepalive)
    if policy.socket_options:
        apply_options(sock, policy.socket_options, UPSTREAM_STATES)


def listen_socket(host: str, port: int, options: Iterable[SocketOption] = (),
                  backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket with Envoy's option states applied in order.

    Args:
        host: address to bind, e.g. ``0.0.0.0``.
        port: port to bind.
        options: listener socket options (PREBIND before bind, BOUND after bind, LISTENING
            after ``listen``).
        backlog: ``listen()`` backlog.
        reuse_port: set ``SO_REUSEPORT`` before bind (one socket per worker on one port).

    Returns:
        The socket, ready for ``asyncio.start_server(sock=...)``.

    Raises:
        SocketOptionError: an option was refused (Envoy rejects such a listener).
        OSError: bind or listen failed.
    """
    opts = tuple(options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        apply_options(sock, opts, ("STATE_PREBIND",))
        sock.bind((host, port))
        apply_options(sock, opts, ("STATE_BOUND",))
        sock.listen(backlog)
        apply_options(sock, opts, ("STATE_LISTENING",))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
