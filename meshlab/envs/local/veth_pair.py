"""Two pod namespaces joined by one veth pair: the small topology of the proxy tests and benchmark.

Layout (nothing is configured in the host namespace)::

    <ns_a>  eth0 ip_a/24 ──veth── eth0 ip_b/24  <ns_b>
            route 10.96.0.0/16 dev eth0           route 10.96.0.0/16 dev eth0

``10.96.0.0/16`` is the lab's Service CIDR: with Istio's capture rules
(:func:`~meshlab.envs.local.istio_iptables.capture_rules`, ENVOY.md §6) a client in ``ns_a`` can
call a ClusterIP that no kube-proxy implements, as the sidecar resolves it itself (like EDS).
Used by ``tests/proxy/_pairlab.py`` and ``benchmarks/sidecar.py`` so both share one
implementation of the plumbing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from meshlab.envs.base import run_argv
from meshlab.envs.local.istio_iptables import capture_rules
from meshlab.envs.local.netns import NETNS_DIR, NetnsShell, add_netns, delete_netns
from meshlab.errors import LabError

SERVICE_CIDR = "10.96.0.0/16"
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class VethPair:
    """Names and addresses of the two namespaces.

    Attributes:
        ns_a: client-side netns name.
        ns_b: server-side netns name.
        ip_a: ``ns_a``'s eth0 address (``/24``).
        ip_b: ``ns_b``'s eth0 address (``/24``).
    """

    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str


def build_veth_pair(pair: VethPair, routes: tuple[str, ...] = (SERVICE_CIDR,)) -> None:
    """Create both namespaces (loopback up), the veth, addresses and ``routes`` via eth0.

    Raises:
        CommandError: an ``ip`` command failed (e.g. a namespace of that name exists).
    """
    add_netns(pair.ns_a)
    add_netns(pair.ns_b)
    run_argv(["ip", "-n", pair.ns_a, "link", "add", "eth0", "type", "veth", "peer", "name",
              "eth0", "netns", pair.ns_b])
    for ns, ip in ((pair.ns_a, pair.ip_a), (pair.ns_b, pair.ip_b)):
        run_argv(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run_argv(["ip", "-n", ns, "link", "set", "eth0", "up"])
        for cidr in routes:
            run_argv(["ip", "-n", ns, "route", "add", cidr, "dev", "eth0"])


def install_capture(netns: str) -> None:
    """Apply Istio's REDIRECT capture rules (15001 out / 15006 in, uid 1337 exempt) in ``netns``."""
    NetnsShell(netns).run(["iptables-restore", "--noflush"], input_text=capture_rules())


def remove_capture(netns: str) -> None:
    """Flush and delete every nat-table rule and chain in ``netns`` (the pod is unmeshed)."""
    shell = NetnsShell(netns)
    shell.run(["iptables", "-t", "nat", "-F"])
    shell.run(["iptables", "-t", "nat", "-X"])


@contextlib.contextmanager
def veth_pair(pair: VethPair, *, capture: bool = True) -> Iterator[VethPair]:
    """Build the pair (with Istio capture in both when ``capture``) and always remove it.

    On exit every process still inside either namespace is killed and both are deleted
    (idempotent, also after a partial build).
    """
    try:
        build_veth_pair(pair)
        if capture:
            install_capture(pair.ns_a)
            install_capture(pair.ns_b)
        yield pair
    finally:
        delete_netns(pair.ns_a)
        delete_netns(pair.ns_b)


def connect_in_netns(netns: str, address: tuple[str, int], timeout_s: float = 5.0
                     ) -> socket.socket:
    """Open a TCP connection from inside ``netns`` without a subprocess.

    A helper thread enters the namespace with ``setns(2)`` (which affects only that thread) and
    connects; the socket stays in that namespace and is usable from any thread of the caller.

    Args:
        netns: a named netns under ``/run/netns``.
        address: ``(ip, port)`` to connect to.
        timeout_s: connect timeout, also left set on the returned socket.

    Raises:
        OSError: the connection failed (refused, timed out …).
        LabError: the namespace could not be entered.
    """
    result: list[object] = []

    def enter_and_connect() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise LabError(f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.create_connection(address, timeout=timeout_s))
        except (OSError, LabError) as exc:
            result.append(exc)

    thread = threading.Thread(target=enter_and_connect, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout_s + 5)
    if not result:
        raise LabError(f"connect in {netns} to {address} did not finish")
    out = result[0]
    if isinstance(out, BaseException):
        raise out
    assert isinstance(out, socket.socket)
    return out
