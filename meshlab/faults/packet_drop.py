"""``packet-drop``: random packet loss on a pod's or a node's traffic (DESIGN.md §5.2).

The book's rule is ``iptables -I INPUT --src <peer> -m statistic --mode random --probability
0.5 -j DROP``; this fault writes the same match, scoped to one pod or one node, in a dedicated
chain ``MESHLAB-PD-<drop_id>``. Every rule carries ``-m comment --comment
meshlab:packet-drop:<drop_id>``, so revert removes exactly this fault's rules (idempotent, also
from a fresh instance built from the fields, as the deadman does), and another fault's rules or
kube-proxy's are never touched.

Layout (``LOCAL`` is the pod's IP ``/32`` or the node's pod CIDR; ``PEER`` the optional peer)::

    <hook> [! -i lo | ! -o lo] -m comment … -j MESHLAB-PD-<id>          (inserted at position 1)
    MESHLAB-PD-<id>  -s LOCAL [-d PEER] [ports] -m statistic … -j DROP   egress
    MESHLAB-PD-<id>  -s LOCAL [-d PEER] [ports] -j RETURN                (only for "both")
    MESHLAB-PD-<id>  -d LOCAL [-s PEER] [ports] -m statistic … -j DROP   ingress

The ``RETURN`` makes each packet meet ``--probability`` exactly once even when it matches both
selectors (two pods of one node talking), so 0.5 means 50 % per packet, never 75 %. ``ports`` is
``-p tcp -m multiport --ports <peer_port>`` (source *or* destination port), so it matches the
conversation with a server port on either side.

Which hop it hits, on the lab (netshoot → L1 sidecar 15006 → L1 app ``-M`` proxy → L1 sidecar
15001 → L2 pod IP:8080 → L2 sidecar 15006 → L2 app):

- **pod target**: hooks ``INPUT ! -i lo`` (ingress) and ``OUTPUT ! -o lo`` (egress) in the pod's
  netns, so loopback hops inside the pod (sidecar ↔ app, the 15001/15006 redirects) are never
  hit; only packets on the pod's ``eth0``.

  - ``target=L2, direction=ingress``: the L1-sidecar → L2 half of the L1→L2 hop: L1's request
    segments, L1's SYN/FIN, and L1's ACKs of L2's response data, lost after L1's socket sent
    them (wire-like loss for L1). L1 retransmits lost requests
    (``cluster.outbound|8080||fortio-server-l2…;.tcp_stats.cx_tx_retransmitted_segments`` and
    ``cx_tx_unacked_segments`` on L1); L2 retransmits response data whose ACKs were all lost
    (its ``listener.0.0.0.0_15006.tcp_stats``).
  - ``target=L2, direction=egress``: the L2 → L1-sidecar half: L2's responses, SYN-ACKs and ACKs
    of L1's requests, dropped in L2's *own* OUTPUT chain. For L2's sockets that is a local drop
    (see below): the response waits as unsent bytes and no retransmission is counted at L2; L1
    retransmits requests whose ACK never left L2.
  - ``target=L2, direction=both``: the whole L1→L2 hop, each packet with one trial, so a
    request/response round trip survives with (1-p)² (25 % at p=0.5).
  - ``target=L1, peer_pod=L2``: the same hop seen from L1's netns (``OUTPUT -d L2``, ``INPUT -s
    L2``). Without a peer, target=L1 hits netshoot→L1 *and* L1→L2.
  - ``peer_service``: the Service's ClusterIP. Only an **unmeshed** pod (netshoot) sees it: its
    packets leave with the ClusterIP as destination (kube-proxy DNATs in the node) and replies
    come back un-NATed by the node. A meshed pod's sidecar connects to the endpoint **pod IPs**
    (EDS), and the app's packets to the ClusterIP are redirected to 15001 before the filter
    table sees them, so a ClusterIP rule would never match there: use ``peer_pod`` (or
    ``peer_cidr``) from a meshed pod; ``peer_service`` is refused for it (ConfigError).

- **node target**: hook ``FORWARD`` in the node's netns, LOCAL = the node's pod CIDR: every pod
  of the node. Pod-to-pod traffic on one node is bridged on ``cni0`` and still passes the
  FORWARD chain because the lab (like kube-proxy's requirement) sets
  ``net.bridge.bridge-nf-call-iptables=1``; traffic to other nodes is routed through it.
  ``target=worknode6`` hits L1→L2 (ingress: L1's requests/ACKs; egress: L2's responses/ACKs);
  ``target=worknode5`` hits both netshoot→L1 and L1→L2. FORWARD sees endpoint pod IPs (the DNAT
  to a Service's endpoint happened in PREROUTING), so ``peer_service`` is refused here too.

Egress rules of a pod target drop *locally*: a segment the pod's own socket hands to IP and
OUTPUT drops never left, so ``ip_local_out`` returns ``-EPERM`` and TCP keeps it queued as not
sent (``tcpi_notsent_bytes``, Envoy's ``cx_tx_unsent_bytes``) and tries again from its probe
timer; ``total_retrans`` does not grow for it (``tcp_write_xmit`` / ``tcp_retransmit_skb``,
net/ipv4/tcp_output.c). Loss that a socket counts as retransmissions happens after it sent: on
the peer's ingress, or on a node target. Measured on the lab with p=0.5 and 5-8 s of 4 KiB
echoes: target=L1/peer L2 egress → L1 retransmitted 0 segments, unsent peak 2132 B; ingress →
6 retransmissions, unacked peak 2; target=worknode6 → 44 retransmissions, unsent always 0.

"Per packet" means per packet as netfilter sees it: with TSO/GSO on veths (and GRO on real NICs)
one packet can be a super-segment of up to 64 KiB, and one trial drops all of it; the kernel
still counts (and retransmits) MSS-sized segments.

Cluster: the same argv runs in the pod's netns through an ephemeral debug container with
NET_ADMIN (``kubectl debug --profile=netadmin``; the istio-proxy container has no NET_ADMIN), or
on the node with ``nsenter -t <pod pid> -n``; a node target runs the argv on the node over SSH
(NodeDriver). CNIs that route pod traffic in eBPF without iptables (Cilium host-routing) bypass
the FORWARD chain, so a node target has no effect there.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from meshlab.envs.base import Env
from meshlab.errors import ConfigError, LabError
from meshlab.faults.iptables_chain import FaultChain

DIRECTIONS = ("ingress", "egress", "both")
CHAIN_PREFIX = "MESHLAB-PD-"
_DROP_ID = re.compile(r"[0-9a-f]{1,16}")  # chain names are at most 28 characters


def _fail(field_name: str, message: str) -> ConfigError:
    return ConfigError(f"packet-drop: {field_name}: {message}")


@dataclass
class PacketDrop:
    """Drop each packet of ``target``'s traffic with probability ``probability``.

    Args:
        target: pod or workload name (rules in the pod's netns), or node name (FORWARD chain of
            the node's netns, every pod of the node).
        probability: chance of dropping each packet, in (0, 1].
        direction: ``ingress`` (to the target), ``egress`` (from it) or ``both``.
        peer_pod: only traffic with this pod (its IP).
        peer_service: only traffic with this Service's ClusterIP (``name`` or
            ``namespace/name``); unmeshed pod targets only (see the module docstring).
        peer_cidr: only traffic with this IPv4 network, e.g. ``10.244.2.0/24``.
        peer_port: only TCP packets with this source or destination port.
        drop_id: names the chain and the rule comment (generated; kept so a fresh instance
            reverts the same rules).

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    probability: float = 0.5
    direction: str = "both"
    peer_pod: str | None = None
    peer_service: str | None = None
    peer_cidr: str | None = None
    peer_port: int | None = None
    drop_id: str = field(default_factory=lambda: secrets.token_hex(4))
    name = "packet-drop"

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise _fail("target", f"must be a pod, workload or node name, got {self.target!r}")
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise _fail("probability", f"must be a number in (0, 1], got {p!r}")
        if self.direction not in DIRECTIONS:
            raise _fail("direction", f"must be one of {', '.join(DIRECTIONS)}, "
                                     f"got {self.direction!r}")
        peers = [n for n in ("peer_pod", "peer_service", "peer_cidr") if getattr(self, n)]
        if len(peers) > 1:
            raise _fail(peers[1], f"give at most one of peer_pod, peer_service, peer_cidr "
                                  f"(got {', '.join(peers)})")
        if self.peer_cidr is not None:
            try:
                net = ipaddress.ip_network(self.peer_cidr, strict=False)
            except ValueError as exc:
                raise _fail("peer_cidr", f"not an IPv4 network: {self.peer_cidr!r}") from exc
            if net.version != 4:
                raise _fail("peer_cidr", f"only IPv4 is supported, got {self.peer_cidr!r}")
        port = self.peer_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 < port < 65536):
            raise _fail("peer_port", f"must be a port number in 1..65535, got {port!r}")
        if not isinstance(self.drop_id, str) or not _DROP_ID.fullmatch(self.drop_id):
            raise _fail("drop_id", f"must be 1-16 lowercase hex digits, got {self.drop_id!r}")

    # names -------------------------------------------------------------------------------
    @property
    def chain(self) -> str:
        """The fault's own chain, ``MESHLAB-PD-<drop_id>``."""
        return CHAIN_PREFIX + self.drop_id

    @property
    def _chain(self) -> FaultChain:
        return FaultChain(self.chain, self.comment)

    @property
    def comment(self) -> str:
        """The comment on every rule of this fault, ``meshlab:packet-drop:<drop_id>``."""
        return f"meshlab:{self.name}:{self.drop_id}"

    # where -------------------------------------------------------------------------------
    def _pod(self, env: Env) -> Any | None:
        try:
            return env.pod(self.target)
        except ConfigError:
            return None

    def _shell(self, env: Env) -> Any:
        """The pod's or the node's shell.

        Raises:
            ConfigError: ``target`` is neither a pod/workload nor a node.
        """
        pod = self._pod(env)
        if pod is not None:
            return env.pod_shell(pod.name)
        try:
            return env.node_shell(self.target)
        except ConfigError as exc:
            raise _fail("target", f"{self.target!r} is neither a pod/workload nor a node "
                                  f"({exc})") from exc

    def _node_cidr(self, env: Env) -> str:
        for node in env.describe().get("topology", {}).get("nodes", []):
            if node.get("name") == self.target and node.get("pod_cidr"):
                return str(node["pod_cidr"])
        raise LabError(f"packet-drop: the env reports no pod CIDR for node {self.target!r}")

    def _service_ip(self, env: Env) -> str:
        for svc in env.describe().get("topology", {}).get("services", []):
            if self.peer_service in (svc.get("name"), f"{svc.get('namespace')}/{svc.get('name')}"):
                return f"{svc['cluster_ip']}/32"
        raise _fail("peer_service", f"no Service named {self.peer_service!r}")

    def _peer(self, env: Env, pod: Any | None) -> str | None:
        """The peer as an iptables address, or None (all traffic)."""
        if self.peer_pod:
            try:
                return f"{env.pod(self.peer_pod).ip}/32"
            except ConfigError as exc:
                raise _fail("peer_pod", str(exc)) from exc
        if self.peer_service:
            if pod is None or pod.meshed:
                where = "a node's FORWARD chain" if pod is None else f"meshed pod {pod.name}"
                raise _fail("peer_service", f"{where} never sees the ClusterIP (traffic goes to "
                                            "endpoint pod IPs): use peer_pod or peer_cidr")
            return self._service_ip(env)
        if self.peer_cidr:
            return str(ipaddress.ip_network(self.peer_cidr, strict=False))
        return None

    # rules -------------------------------------------------------------------------------
    def chain_rules(self, local: str, peer: str | None) -> list[list[str]]:
        """The rules of :attr:`chain` (argv after ``iptables -A <chain>``), in order.

        Args:
            local: the pod's ``ip/32`` or the node's pod CIDR.
            peer: the peer address/network, or None.
        """
        tag = self._chain.tag
        ports = (["-p", "tcp", "-m", "multiport", "--ports", str(self.peer_port)]
                 if self.peer_port else [])
        drop = ["-m", "statistic", "--mode", "random", "--probability", f"{self.probability:g}",
                *tag, "-j", "DROP"]
        egress = ["-s", local, *(["-d", peer] if peer else []), *ports]
        ingress = ["-d", local, *(["-s", peer] if peer else []), *ports]
        rules = []
        if self.direction in ("egress", "both"):
            rules.append([*egress, *drop])
        if self.direction == "both":
            rules.append([*egress, *tag, "-j", "RETURN"])
        if self.direction in ("ingress", "both"):
            rules.append([*ingress, *drop])
        return rules

    def hook_rules(self, on_node: bool) -> list[list[str]]:
        """Where :attr:`chain` is hooked in: ``[builtin, match…]`` (the jump is added by
        :meth:`FaultChain.create`)."""
        if on_node:
            return [["FORWARD"]]
        hooks = []
        if self.direction in ("ingress", "both"):
            hooks.append(["INPUT", "!", "-i", "lo"])
        if self.direction in ("egress", "both"):
            hooks.append(["OUTPUT", "!", "-o", "lo"])
        return hooks

    # protocol ----------------------------------------------------------------------------
    def inject(self, env: Env) -> str:
        """Create the chain and its rules, then hook it in (a second inject is a no-op).

        Raises:
            ConfigError: unknown target or peer, or a peer the target never sees.
            CommandError: an iptables command failed (e.g. no ``statistic`` match).
        """
        pod = self._pod(env)
        shell = self._shell(env)
        local = f"{pod.ip}/32" if pod is not None else self._node_cidr(env)
        peer = self._peer(env, pod)
        hooks = self.hook_rules(on_node=pod is None)
        if not self._chain.create(shell, self.chain_rules(local, peer), hooks):
            return f"already active on {shell.name} ({self.chain})"
        return (f"{shell.name}: drop {self.probability:g} of {self.direction} packets of "
                f"{local}{f' with {peer}' if peer else ''}"
                f"{f' port {self.peer_port}' if self.peer_port else ''} "
                f"({self.chain} from {', '.join(r[0] for r in hooks)})")

    def revert(self, env: Env) -> str:
        """Delete every rule carrying this fault's comment, then its chain (idempotent; a
        namespace that no longer exists has nothing to revert)."""
        return self._chain.remove(self._shell(env), self.hook_rules(self._pod(env) is None))
