"""``network-partition``: two sets of pods or nodes that cannot reach each other, in either
direction (Chaos Mesh NetworkChaos ``partition``, Litmus ``pod-network-partition``).

Each member of either side gets a chain ``MESHLAB-NP-<id>`` in its own netns that matches
packets *from* the other side's addresses (a pod's IP, a node's IP and pod CIDR). So every
packet leaves its sender — the sender's TCP counts it as sent, retransmits it, and its
``tcp_stats`` climb — and vanishes at the receiver, as on a cut link:

- ``mode=drop`` (default): ``-j DROP``. Established connections stall; no RST, no ICMP; new
  connections time out in SYN-SENT. Reverting heals it, and a stalled connection resumes (its
  retransmission gets through) or has already hit its own timeout (``tcp_retries2``,
  ``TCP_USER_TIMEOUT``, keepalive, the app's or Envoy's timeouts).
- ``mode=reject``: the fast-fail variant: TCP gets a RST (``--reject-with tcp-reset``), other
  protocols ICMP port unreachable; connects and established connections fail at once. The
  other side's RSTs and ICMP errors are let through (``RETURN``), or each side would swallow
  the other's rejection.

Hooks: a pod member's chain is jumped to from ``INPUT ! -i lo`` (loopback hops inside the pod
— sidecar ↔ app — are never hit); a node member's from ``INPUT`` (the node itself) and
``FORWARD`` (every pod of the node: traffic routed to it, and traffic bridged on ``cni0``,
which passes FORWARD because the lab sets ``net.bridge.bridge-nf-call-iptables=1`` like
kube-proxy requires). Rules carry ``meshlab:network-partition:<id>`` and are removed by that
comment (:mod:`meshlab.faults.iptables_chain`).

Only pod IPs are matched, as a meshed sidecar connects to endpoint pod IPs (EDS); an unmeshed
client that talks to a ClusterIP is still cut, because the other side drops its packets (they
arrive with the client's pod IP once the node's kube-proxy DNAT is done).

Cluster: the same argv runs in the pod's netns through the debug container (NET_ADMIN), and on
a node over SSH. CNIs that route in eBPF without iptables (Cilium host-routing) bypass the node
FORWARD chain: use pod members there.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from meshlab.envs.base import Env, Shell
from meshlab.errors import ConfigError, LabError
from meshlab.faults.iptables_chain import FaultChain
from meshlab.faults.targets import param_error

NAME = "network-partition"
MODES = ("drop", "reject")
_ID = re.compile(r"[0-9a-f]{1,16}")


def _members(value: Any, field_name: str) -> list[str]:
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and n for n in names):
        raise param_error(NAME, field_name, f"must be one or more pod, workload or node names "
                                            f"(a list, or 'a,b'), got {value!r}")
    return names


@dataclass
class NetworkPartition:
    """Cut every path between ``side_a`` and ``side_b``, both ways.

    Args:
        side_a: pods/workloads or nodes on one side (a list, or ``"a,b"``).
        side_b: pods/workloads or nodes on the other side.
        mode: ``drop`` (packets vanish: a real partition) or ``reject`` (TCP RST / ICMP
            unreachable: fail fast).
        partition_id: names the chains and the rule comment (generated; kept so a fresh
            instance reverts the same rules).

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    side_a: list[str]
    side_b: list[str]
    mode: str = "drop"
    partition_id: str = field(default_factory=lambda: secrets.token_hex(4))
    name = NAME

    def __post_init__(self) -> None:
        self.side_a = _members(self.side_a, "side_a")
        self.side_b = _members(self.side_b, "side_b")
        both = sorted(set(self.side_a) & set(self.side_b))
        if both:
            raise param_error(NAME, "side_b", f"{', '.join(both)} is on both sides")
        if self.mode not in MODES:
            raise param_error(NAME, "mode", f"must be one of {', '.join(MODES)}, "
                                            f"got {self.mode!r}")
        if not isinstance(self.partition_id, str) or not _ID.fullmatch(self.partition_id):
            raise param_error(NAME, "partition_id", f"must be 1-16 lowercase hex digits, got "
                                                    f"{self.partition_id!r}")

    @property
    def chain(self) -> FaultChain:
        """This partition's chain (the same name in every member's netns)."""
        return FaultChain(f"MESHLAB-NP-{self.partition_id}",
                          f"meshlab:{NAME}:{self.partition_id}")

    # where -------------------------------------------------------------------------------
    def _resolve(self, env: Env, name: str, side: str) -> tuple[Shell, list[str], bool]:
        """``(shell, addresses, is_node)`` of one member.

        Raises:
            ConfigError: neither a pod/workload nor a node (the side is named).
        """
        try:
            pod = env.pod(name)
        except ConfigError:
            pod = None
        if pod is not None:  # a dry run's pods have no IP yet: print where it goes
            return env.pod_shell(pod.name), [f"{pod.ip or f'<{pod.name} IP>'}/32"], False
        for node in env.describe().get("topology", {}).get("nodes", []):
            if node.get("name") == name:
                addresses = [a for a in (f"{node['ip']}/32" if node.get("ip") else None,
                                         node.get("pod_cidr")) if a]
                if not addresses:
                    raise LabError(f"{NAME}: the env reports no address for node {name!r}")
                return env.node_shell(name), addresses, True
        raise param_error(NAME, side, f"{name!r} is neither a pod/workload nor a node of the "
                                      f"lab")

    def _plan(self, env: Env) -> list[tuple[Shell, list[str], bool]]:
        """Each member: ``(shell, the other side's addresses, is_node)``."""
        sides = {side: [self._resolve(env, n, side) for n in getattr(self, side)]
                 for side in ("side_a", "side_b")}
        out = []
        for side, other in (("side_a", "side_b"), ("side_b", "side_a")):
            peers = [a for _, addresses, _ in sides[other] for a in addresses]
            out += [(shell, peers, is_node) for shell, _, is_node in sides[side]]
        return out

    def rules(self, peers: list[str]) -> list[list[str]]:
        """The chain's rules (argv after ``iptables -A <chain>``) for packets from ``peers``."""
        tag = self.chain.tag
        if self.mode == "drop":
            return [["-s", peer, *tag, "-j", "DROP"] for peer in peers]
        # the other side's own rejections (its RSTs and ICMP errors) must reach us
        return [rule for peer in peers for rule in (
            ["-s", peer, "-p", "tcp", "--tcp-flags", "RST", "RST", *tag, "-j", "RETURN"],
            ["-s", peer, "-p", "icmp", "--icmp-type", "destination-unreachable", *tag,
             "-j", "RETURN"],
            ["-s", peer, "-p", "tcp", *tag, "-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-s", peer, *tag, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"])]

    @staticmethod
    def hooks(is_node: bool) -> list[list[str]]:
        """Where the chain is jumped to from: a node's INPUT and FORWARD, a pod's INPUT."""
        return [["INPUT"], ["FORWARD"]] if is_node else [["INPUT", "!", "-i", "lo"]]

    # protocol ----------------------------------------------------------------------------
    def inject(self, env: Env) -> str:
        """Install the chain in every member's netns (a second inject is a no-op there).

        Raises:
            ConfigError: an unknown member.
            CommandError: an iptables command failed (what was installed is reverted by the
                caller, :func:`meshlab.faults.base.start`).
        """
        plan = self._plan(env)  # resolves every member before anything is changed
        for shell, peers, is_node in plan:
            self.chain.create(shell, self.rules(peers), self.hooks(is_node))
        return (f"{self.mode} between [{', '.join(self.side_a)}] and [{', '.join(self.side_b)}]"
                f" ({self.chain.chain} in {len(plan)} netns)")

    def revert(self, env: Env) -> str:
        """Remove the chain from every member's netns (idempotent)."""
        lines = []
        for side in ("side_a", "side_b"):
            for name in getattr(self, side):
                try:
                    shell, _, is_node = self._resolve(env, name, side)
                except (ConfigError, LabError) as exc:
                    lines.append(f"{name}: nothing to revert ({exc})")
                    continue
                lines.append(self.chain.remove(shell, self.hooks(is_node)))
        return "; ".join(lines)
