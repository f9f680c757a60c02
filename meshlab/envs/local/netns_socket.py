"""TCP sockets that live in a named network namespace, created without touching the host's.

A socket belongs to the network namespace of the thread that created it (the kernel takes
``current->nsproxy->net_ns`` in ``sock_create``, net/socket.c) and keeps it for its whole life,
whichever thread later connects, reads or writes it. So the runner can talk to a lab node over a
plain Python socket: a short-lived helper thread enters the namespace with ``setns(2)``
(``CLONE_NEWNET`` only affects the calling thread), creates the socket, switches back and exits.
The runner's other threads never change namespace, and the socket's packets are routed by the
lab namespace's tables, so they can only reach what that namespace reaches (never the outside).

Python 3.11 has no ``os.setns`` (added in 3.12), so ``setns`` is called through ``ctypes``.
Needs ``CAP_SYS_ADMIN`` (the lab runs as root anyway).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from meshlab.envs.local.netns import NETNS_DIR
from meshlab.errors import LabError

CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(fd: int) -> None:
    """``setns(fd, CLONE_NEWNET)`` for the calling thread; raises OSError on failure."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _enter_error(netns: str, exc: OSError) -> LabError:
    if isinstance(exc, FileNotFoundError):
        return LabError(f"network namespace {netns} does not exist ({NETNS_DIR / netns})")
    return LabError(f"cannot enter network namespace {netns}: {exc}")


def run_in_netns(netns: str, fn: Callable[[], T], *, timeout_s: float | None = None) -> T:
    """Call ``fn()`` in a short-lived thread that has entered network namespace ``netns``.

    Every socket ``fn`` creates lives in ``netns`` (and stays there, e.g. in a connection
    pool); the calling thread and every other thread of the runner never change namespace.
    The helper thread enters ``netns`` with ``setns(2)`` and switches back before it exits.

    Args:
        netns: a named namespace (``/run/netns/<netns>``), e.g. ``ml-lab-c``.
        fn: what to run; its return value is handed back, its exception re-raised here.
        timeout_s: give up waiting for ``fn`` after this many seconds (None: wait); the thread
            is a daemon, so a hung ``fn`` does not keep the runner alive.

    Returns:
        What ``fn`` returned.

    Raises:
        LabError: the namespace does not exist or could not be entered, or ``fn`` did not
            return within ``timeout_s``.
        Exception: whatever ``fn`` raised.
    """
    path = NETNS_DIR / netns
    result: list[tuple[bool, Any]] = []

    def enter_and_call() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        except OSError as exc:
            result.append((False, _enter_error(netns, exc)))
            return
        try:
            target = os.open(path, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
        except OSError as exc:
            os.close(own)
            result.append((False, _enter_error(netns, exc)))
            return
        try:
            result.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            result.append((False, exc))
        finally:
            _setns(own)  # be tidy: the thread exits right after anyway
            os.close(own)

    worker = threading.Thread(target=enter_and_call, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise LabError(f"call in network namespace {netns} did not return within "
                       f"{timeout_s:g} s")
    if not result:
        raise LabError(f"call in network namespace {netns} produced nothing")
    ok, value = result[0]
    if not ok:
        raise value
    return value



def netns_runner(netns: str, timeout_s: float | None = None) -> Callable[[Callable[[], T]], T]:
    """``runner(fn)`` = :func:`run_in_netns` ``(netns, fn, timeout_s=timeout_s)``: hand a
    client (:class:`~meshlab.envs.prometheus_api.PrometheusClient`) a way into ``netns``."""
    return lambda fn: run_in_netns(netns, fn, timeout_s=timeout_s)

def netns_socket(netns: str, family: int = socket.AF_INET,
                 type_: int = socket.SOCK_STREAM) -> socket.socket:
    """Create an unconnected socket inside network namespace ``netns``.

    Args:
        netns: a named namespace (``/run/netns/<netns>``), e.g. ``ml-lab-n0``.
        family: address family (``AF_INET`` / ``AF_INET6``).
        type_: socket type (``SOCK_STREAM`` for TCP).

    Returns:
        The socket; it stays in ``netns`` for its whole life.

    Raises:
        LabError: the namespace does not exist or could not be entered.
    """
    try:
        return run_in_netns(netns, lambda: socket.socket(family, type_))
    except OSError as exc:
        raise LabError(f"cannot create a socket in network namespace {netns}: {exc}") from exc


def netns_connect(netns: str, host: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP socket connected from inside ``netns`` to ``host:port``.

    Matches the ``socket_factory`` signature of :class:`meshlab.envs.ssh.SshConfig`, e.g.
    ``functools.partial(netns_connect, "ml-lab-n0")``. ``host`` is resolved by the runner's
    resolver (use IP addresses for lab nodes).

    Args:
        netns: namespace the connection starts from.
        host: address (or name) to connect to.
        port: TCP port.
        timeout_s: connect timeout in seconds; also left set on the socket.

    Returns:
        The connected socket.

    Raises:
        LabError: the namespace is missing, or the connection was refused or timed out.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LabError(f"cannot resolve {host}: {exc}") from exc
    family, _, _, _, addr = infos[0]
    sock = netns_socket(netns, family, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise LabError(f"cannot connect from netns {netns} to {host}:{port}: {exc}") from exc
    return sock
