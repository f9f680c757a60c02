"""kube-proxy (iptables mode) Service NAT for a node netns, as ``iptables-restore`` input.

Same chain layout as kube-proxy: ``KUBE-SERVICES`` → ``KUBE-SVC-<hash>`` per Service port →
``KUBE-SEP-<hash>`` per endpoint, with ``-m statistic --mode random --probability 1/(n-i)`` to
spread connections evenly, ``KUBE-MARK-MASQ`` for hairpin traffic (a pod reaching itself through
its own Service) and ``KUBE-POSTROUTING`` masquerading marked packets. Chain hashes are
computed the way kube-proxy does (sha256 of the port name, base32, first 16 characters).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

MASQ_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class ServicePortNat:
    """One Service port to program.

    Attributes:
        namespace: Service namespace.
        service: Service name.
        port_name: Service port name (part of the chain hash, as in kube-proxy).
        cluster_ip: the ClusterIP.
        port: Service port.
        endpoints: ``(pod_ip, target_port)`` pairs of the ready endpoints, in a stable order.
        unready: the pairs of endpoints that are not ready now: their ``KUBE-SEP`` chains are
            declared (so a resync empties them) with no rule and no jump to them.
        protocol: ``tcp`` or ``udp`` (kube-dns has both on port 53, as ``dns``/``dns-tcp``).
    """

    namespace: str
    service: str
    port_name: str
    cluster_ip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]
    unready: tuple[tuple[str, int], ...] = ()
    protocol: str = "tcp"

    @property
    def svc_port_name(self) -> str:
        """``namespace/service:port`` — kube-proxy's ServicePortName string."""
        return f"{self.namespace}/{self.service}:{self.port_name}"


def chain_hash(*parts: str) -> str:
    """kube-proxy's chain-name hash: base32(sha256(concat(parts)))[:16]."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def _sep(sp: ServicePortNat, ip: str, tport: int) -> str:
    return "KUBE-SEP-" + chain_hash(sp.svc_port_name, sp.protocol, f"{ip}:{tport}")


def service_rules(ports: list[ServicePortNat], jumps: bool = True) -> str:
    """``iptables-restore --noflush`` text for the nat and filter tables of a node.

    Every ``KUBE-*`` chain is declared, so applying the text again (a resync after an endpoint
    change, as kube-proxy's ``syncProxyRules``) replaces their rules.

    Args:
        ports: every Service port of the lab.
        jumps: add the jumps from the built-in chains (``PREROUTING``, ``OUTPUT``,
            ``POSTROUTING``, ``FORWARD``): the first sync only.

    Returns:
        Text with a ``*nat`` and a ``*filter`` part; a port with no ready endpoint gets a
        REJECT in the filter table as kube-proxy does (connection refused, not a timeout).
    """
    nat = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
           ":KUBE-POSTROUTING - [0:0]"]
    body: list[str] = []
    rejects: list[str] = []
    for sp in ports:
        nat += [f":{_sep(sp, ip, tport)} - [0:0]" for ip, tport in sp.unready]
        comment = f'-m comment --comment "{sp.svc_port_name} cluster IP"'
        pr = sp.protocol
        if not sp.endpoints:
            rejects.append(f"-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {pr} {comment} -m {pr} "
                           f"--dport {sp.port} -j REJECT --reject-with icmp-port-unreachable")
            continue
        svc_chain = "KUBE-SVC-" + chain_hash(sp.svc_port_name + pr)
        nat.append(f":{svc_chain} - [0:0]")
        body.append(f"-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {pr} {comment} -m {pr} "
                    f"--dport {sp.port} -j {svc_chain}")
        n = len(sp.endpoints)
        for i, (ip, tport) in enumerate(sp.endpoints):
            sep = _sep(sp, ip, tport)
            nat.append(f":{sep} - [0:0]")
            if i < n - 1:
                body.append(f"-A {svc_chain} -m statistic --mode random "
                            f"--probability {1.0 / (n - i):.11f} -j {sep}")
            else:
                body.append(f"-A {svc_chain} -j {sep}")
            body.append(f"-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ")
            body.append(f"-A {sep} -p {pr} -m {pr} -j DNAT --to-destination {ip}:{tport}")
    if jumps:
        nat += [
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            ('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
             '-j KUBE-POSTROUTING')]
    nat += [f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
            f"-A KUBE-POSTROUTING -m mark --mark {MASQ_MARK} -j MASQUERADE"] + body + ["COMMIT"]
    filt = ["*filter", ":KUBE-SERVICES - [0:0]"]
    if jumps:
        filt += ["-A FORWARD -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES"]
    return "\n".join(nat + filt + rejects + ["COMMIT"]) + "\n"
