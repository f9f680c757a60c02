"""``tc`` building blocks shared by the qdisc faults (``bandwidth``, ``network-delay``): the IFB
recipe for shaping what a device receives, and peer/port filters that send only the matching
packets through a fault's qdisc (Chaos Mesh NetworkChaos ``target``/``externalTargets``: the
fault acts on traffic between the selected pods only).

Filtering uses an ``htb`` root (``tc-htb(8)``, ``tc-u32(8)``; ``prio`` is not built on every
kernel, this lab's included): unclassified packets pass straight through (``default 0``, htb's
direct queue, no shaping), a ``u32`` filter puts the matching ones in class 3 — unlimited
itself (``OPEN_RATE``) — and the fault's qdisc (``tbf``, ``netem``) is that class's child.
"""

from __future__ import annotations

import ipaddress

from meshlab.envs.base import Env, Shell
from meshlab.errors import ConfigError
from meshlab.faults.targets import listing_shows, param_error

#: The filtered class's own rate: far above any veth, so only its child qdisc limits it.
OPEN_RATE = "100gbit"


def ifb_redirect(device: str, ifb: str) -> list[list[str]]:
    """The IFB recipe: create ``ifb`` and redirect everything arriving on ``device`` to its
    egress, where a qdisc can shape or delay it (``tc-mirred(8)``, ``ifb`` in ``ip-link(8)``)."""
    return [["ip", "link", "add", ifb, "type", "ifb"],
            ["ip", "link", "set", ifb, "up"],
            ["tc", "qdisc", "add", "dev", device, "handle", "ffff:", "ingress"],
            ["tc", "filter", "add", "dev", device, "parent", "ffff:", "protocol", "all", "u32",
             "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb]]


def remove_ifb_redirect(shell: Shell, device: str, ifb: str, made: bool = True) -> bool:
    """Undo :func:`ifb_redirect`: the ingress qdisc only if its filter redirects to ``ifb``
    (never another fault's; a dry run deletes it when the fault ``made`` it), then ``ifb``
    (deleted without asking first, so a dry run prints it). Returns whether ``ifb`` existed."""
    if listing_shows(shell, ["tc", "filter", "show", "dev", device, "ingress"],
                     lambda filters: ifb in filters, made):
        shell.run(["tc", "qdisc", "del", "dev", device, "ingress"], check=False)
    return shell.run(["ip", "link", "del", ifb], check=False).ok


def check_peer(fault: str, peer_pod: str | None, peer_cidr: str | None,
               peer_port: int | None) -> None:
    """Validate a fault's peer filter fields (at most one of ``peer_pod``/``peer_cidr``, an
    IPv4 network, a port in 1..65535).

    Raises:
        ConfigError: ``<fault>: <field>: <why>``.
    """
    if peer_pod is not None and (not isinstance(peer_pod, str) or not peer_pod):
        raise param_error(fault, "peer_pod", f"must be a pod name, got {peer_pod!r}")
    if peer_pod and peer_cidr:
        raise param_error(fault, "peer_cidr", "give at most one of peer_pod, peer_cidr")
    if peer_cidr is not None:
        try:
            ipaddress.IPv4Network(peer_cidr, strict=False)
        except (TypeError, ValueError) as exc:
            raise param_error(fault, "peer_cidr", f"not an IPv4 network: "
                                                  f"{peer_cidr!r}") from exc
    if peer_port is not None and (isinstance(peer_port, bool) or not isinstance(peer_port, int)
                                  or not 0 < peer_port < 65536):
        raise param_error(fault, "peer_port", f"must be a port in 1..65535, got {peer_port!r}")


def peer_network(env: Env, fault: str, peer_pod: str | None, peer_cidr: str | None) -> str | None:
    """The peer filter as an IPv4 network (``<pod ip>/32`` for a pod), or None for no filter.

    Raises:
        ConfigError: ``peer_pod`` is not a pod of the lab (names the field).
    """
    if peer_pod:
        try:
            return f"{env.pod(peer_pod).ip}/32"
        except ConfigError as exc:
            raise param_error(fault, "peer_pod", str(exc)) from exc
    if peer_cidr:
        return str(ipaddress.IPv4Network(peer_cidr, strict=False))
    return None


def filtered_root(device: str, handle: str, child: list[str], peer: str | None,
                  peer_port: int | None, side: str) -> list[list[str]]:
    """``tc`` argvs that put qdisc ``child`` (its kind and options, e.g. ``["tbf", "rate", …]``)
    on ``device``: as the root (handle ``handle``) when there is no filter, else under class 3
    of an ``htb`` root ``handle`` with a ``u32`` filter for ``peer`` (an IPv4 network) and/or
    ``peer_port`` (TCP/UDP port) on ``side`` (``dst`` for what the device sends to the peer,
    ``src`` for what it receives from it).

    Raises:
        ValueError: ``side`` is neither ``dst`` nor ``src``.
    """
    if side not in ("dst", "src"):
        raise ValueError(f"side must be dst or src, got {side!r}")
    if not peer and not peer_port:
        return [["tc", "qdisc", "add", "dev", device, "root", "handle", handle, *child]]
    match = (["match", "ip", side, peer] if peer else []) + (
        ["match", "ip", "dport" if side == "dst" else "sport", str(peer_port), "0xffff"]
        if peer_port else [])
    return [["tc", "qdisc", "add", "dev", device, "root", "handle", handle, "htb", "default",
             "0"],
            ["tc", "class", "add", "dev", device, "parent", handle, "classid", f"{handle}3",
             "htb", "rate", OPEN_RATE, "quantum", "60000"],
            ["tc", "qdisc", "add", "dev", device, "parent", f"{handle}3", *child],
            ["tc", "filter", "add", "dev", device, "parent", handle, "protocol", "ip", "u32",
             *match, "flowid", f"{handle}3"]]
