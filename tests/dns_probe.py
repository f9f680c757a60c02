"""DNS queries from inside a lab netns, for the DNS tests (dnspython over a socket created in the
netns, so the query leaves from the pod's own address through its rules)."""

from __future__ import annotations

import socket

import dns.exception
import dns.message
import dns.query
import dns.rcode

from meshlab.envs.local.netns_socket import netns_socket

KUBE_DNS = "10.96.0.10"


def ask(netns: str, name: str, rdtype: str = "A", server: str = KUBE_DNS, port: int = 53,
        timeout_s: float = 2.0) -> dns.message.Message | None:
    """One UDP query from ``netns``; None when no answer came within ``timeout_s``."""
    query = dns.message.make_query(name, rdtype)
    with netns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            return dns.query.udp(query, server, port=port, timeout=timeout_s, sock=sock)
        except dns.exception.Timeout:
            return None


def rcode(resp: dns.message.Message | None) -> str:
    """``NOERROR``/``NXDOMAIN``/… of a response, ``TIMEOUT`` for none."""
    return "TIMEOUT" if resp is None else dns.rcode.to_text(resp.rcode())


def addresses(resp: dns.message.Message | None) -> list[str]:
    """The A record addresses of a response's answer section."""
    if resp is None:
        return []
    return sorted(r.address for rrset in resp.answer for r in rrset if hasattr(r, "address"))
