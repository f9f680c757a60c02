"""Node power-off / power-on in the local lab: :class:`LocalNodeDriver` (DESIGN.md §3).

Power-off plays a power loss, in this order:

1. **Cut** the node from the underlay: its uplink veth end in the cluster netns goes down, so
   the bridge stops forwarding to it and the node's ``eth0`` loses carrier (``veth_xmit`` drops
   what it sends, ``is_skb_forwardable``: peer not up). Nothing the dying sockets emit next (a
   FIN from a closed socket, a RST for unread data) can reach a peer.
2. **SIGKILL** every process of every pod on the node (no graceful shutdown, no drain).
3. **Delete** the pods' netns and the node netns with their ``/etc/netns`` folders; deleting the
   node netns removes the uplink veth, and power-off waits until the kernel has done so.
4. **Record** it in the lab state file, loaded fresh under a lock (another process — the fault
   deadman — may power the node on meanwhile): the node is listed in ``powered_off`` (written
   first, so a runner killed half-way leaves a node that power-on knows to rebuild), its pids,
   namespaces and sysctls are dropped.

Peers are left with half-open connections: an ESTAB socket toward a pod of the node keeps
retransmitting (``ss`` ``timer:(on,…)``) and gets no FIN or RST; new connections see their SYNs
vanish until the peer node's ARP entry for the dead node fails (then ICMP host unreachable).

Power-on rebuilds the node exactly as ``up`` built it (one code path,
:func:`~meshlab.envs.local.network.build_node_with_pods`): node netns, uplink, routes to the
other nodes (theirs to this node were never removed), its pods' netns with the same IPs, the
capture rules and the Service NAT; then the node announces its new MAC with a gratuitous ARP
(as a booting host does, Linux ``arp_notify``), so peers do not keep sending to the old MAC for
the ~8 s of a failed unicast re-probe (``delay_first_probe_time`` 5 s + 3 ``ucast_probes``),
and the pods are started (kubelet) and waited for. Sockets and conntrack are fresh: the peers'
half-open connections now get a RST on their next segment. After a power cycle the lab's
:meth:`~meshlab.envs.local.lab.LocalEnv.fingerprint` equals the one before.
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from contextlib import AbstractContextManager
from typing import Protocol

from meshlab.envs.base import run_argv
from meshlab.envs.local import kubelet
from meshlab.envs.local.netns import NETNS_DIR, delete_netns, kill_pids, netns_pids
from meshlab.envs.local.netns_socket import netns_socket
from meshlab.envs.local.network import build_node_with_pods
from meshlab.envs.local.plan import LabPlan, NodePlan
from meshlab.envs.local.state import LabState, locked_state
from meshlab.errors import ConfigError, LabError


class LabView(Protocol):
    """What the driver reads and updates of the local env
    (:class:`~meshlab.envs.local.lab.LocalEnv`)."""

    lab: str
    plan: LabPlan
    state: LabState
    ready_timeout_s: float

KILL_WAIT_S = 5.0
"""Seconds to wait for SIGKILLed processes to be gone."""
UPLINK_GONE_WAIT_S = 10.0
"""Seconds to wait for the kernel to remove a deleted node netns' uplink (asynchronous)."""
_POLL_S = 0.02
_ETH_P_ARP = 0x0806
_ETH_P_IP = 0x0800


def announce(netns: str, ifname: str, ip: str) -> None:
    """Send one gratuitous ARP request (sender = target = ``ip``) out of ``ifname`` in ``netns``.

    Receivers update an existing neighbour entry for ``ip`` with the sender MAC (Linux
    ``arp_process``: a gratuitous ARP overrides), as when a host brings an interface up with
    ``arp_notify``.

    Raises:
        LabError: the namespace or interface does not exist.
    """
    sock = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        try:
            sock.bind((ifname, 0))
            mac = sock.getsockname()[4]
            addr = socket.inet_aton(ip)
            arp = struct.pack("!HHBBH", 1, _ETH_P_IP, 6, 4, 1) + mac + addr + bytes(6) + addr
            frame = b"\xff" * 6 + mac + struct.pack("!H", _ETH_P_ARP) + arp
            sock.send(frame.ljust(60, b"\0"))
        except OSError as exc:
            raise LabError(f"gratuitous ARP from {netns} {ifname}: {exc}") from exc


class LocalNodeDriver:
    """Powers local-lab nodes off and on (implements :class:`meshlab.envs.node_driver.NodeDriver`).

    Holds no state of its own: every call reads the lab state file, so a fresh driver (e.g. in
    the fault deadman) can power on a node another process powered off.

    Args:
        env: the :class:`~meshlab.envs.local.lab.LocalEnv` whose nodes are switched.
    """

    def __init__(self, env: LabView) -> None:
        self.env = env

    def __repr__(self) -> str:
        state = LabState.load(self.env.lab)
        return (f"LocalNodeDriver(lab={self.env.lab!r}, "
                f"powered_off={state.powered_off if state else []!r})")

    def _node(self, node: str) -> NodePlan:
        try:
            return self.env.plan.nodes[node]
        except KeyError:
            raise ConfigError(f"node: no node named {node!r} in lab {self.env.lab!r} "
                              f"(nodes: {', '.join(self.env.plan.nodes)})") from None

    def _lab_up(self, state: LabState | None) -> bool:
        return state is not None and (NETNS_DIR / self.env.plan.cluster_netns).exists()

    def _locked(self) -> AbstractContextManager[LabState | None]:
        """Hold the lab's state lock; yields the state file as it is now (None: no lab)."""
        return locked_state(self.env.lab)

    def _present(self, n: NodePlan) -> bool:
        names = [n.netns] + [pp.netns for pp in self.env.plan.pods_on(n.name)]
        return all((NETNS_DIR / ns).exists() for ns in names)

    def is_up(self, node: str) -> bool:
        """True when ``node`` is not recorded as powered off and its namespaces exist."""
        n = self._node(node)
        state = LabState.load(self.env.lab)
        return (state is not None and self._lab_up(state) and node not in state.powered_off
                and self._present(n))

    def power_off(self, node: str) -> str:
        """Cut ``node`` from the underlay, SIGKILL its pods, delete its namespaces.

        Raises:
            ConfigError: unknown node.
            LabError: the lab is not up, or a step failed.
        """
        n = self._node(node)
        with self._locked() as state:
            if state is None or not self._lab_up(state):
                raise LabError(f"node power-off {node}: lab {self.env.lab!r} is not up")
            if node in state.powered_off:
                return f"{node}: already powered off"
            start = time.monotonic()
            state.powered_off.append(node)
            state.save()
            if (NETNS_DIR / n.netns).exists():
                run_argv(["ip", "-n", self.env.plan.cluster_netns, "link", "set", n.uplink,
                          "down"])
            killed, removed = self._remove(state, n)
            self.env.state = state
            pods = [pp.name for pp in self.env.plan.pods_on(node)]
            return (f"{node}: cut from the underlay ({n.uplink} down), SIGKILLed {killed} "
                    f"process(es) of {len(pods)} pod(s) {pods}, deleted {len(removed)} netns "
                    f"in {time.monotonic() - start:.2f} s")

    def _remove(self, state: LabState, n: NodePlan) -> tuple[int, list[str]]:
        """SIGKILL the node's processes, delete its namespaces, wait for its uplink to go and
        drop them from ``state`` (saved). Idempotent.

        Returns:
            ``(processes killed, namespaces deleted)``.
        """
        pods = self.env.plan.pods_on(n.name)
        names = [pp.netns for pp in pods] + [n.netns]
        owners = {pp.name for pp in pods}
        keys = [k for k in state.pids if k.split("/", 1)[0] in owners]
        pids = {state.pids[k] for k in keys}
        for ns in names:
            pids.update(netns_pids(ns) if (NETNS_DIR / ns).exists() else [])
        kill_pids(sorted(pids), grace_s=KILL_WAIT_S, first=signal.SIGKILL)
        removed = [ns for ns in names if (NETNS_DIR / ns).exists()]
        for ns in names:
            delete_netns(ns)
        self._wait_uplink_gone(n)
        for k in keys:
            del state.pids[k]
        state.netns = [ns for ns in state.netns if ns not in names]
        state.sysctls = {k: v for k, v in state.sysctls.items() if k.split(" ", 1)[0] not in names}
        state.save()
        return len(pids), removed

    def _wait_uplink_gone(self, n: NodePlan) -> None:
        c = self.env.plan.cluster_netns
        deadline = time.monotonic() + UPLINK_GONE_WAIT_S
        while run_argv(["ip", "-n", c, "link", "show", n.uplink], check=False).ok:
            if time.monotonic() > deadline:
                raise LabError(f"node {n.name}: uplink {n.uplink} still in {c} "
                               f"{UPLINK_GONE_WAIT_S:.0f} s after its netns was deleted")
            time.sleep(_POLL_S)

    def power_on(self, node: str) -> str:
        """Rebuild ``node`` and its pods and wait until they are ready (no-op when it is up).

        Raises:
            ConfigError: unknown node.
            LabError: the lab is down (the next ``up`` builds every node), a step failed or a
                pod did not become ready (the node stays recorded as powered off; ``meshlab
                down`` removes what was built).
        """
        n = self._node(node)
        with self._locked() as state:
            if state is None or not self._lab_up(state):
                raise LabError(f"node power-on {node}: lab {self.env.lab!r} is down")
            if node not in state.powered_off and self._present(n):
                return f"{node}: already on"
            start = time.monotonic()
            if node not in state.powered_off:  # half-removed by a runner killed mid-way
                state.powered_off.append(node)
                state.save()
            self._remove(state, n)
            plan = self.env.plan
            build_node_with_pods(plan, state, n)
            pods = plan.pods_on(node)
            kubelet.start_pods(plan, state, pods, self.env.ready_timeout_s)
            announce(n.netns, "eth0", n.ip)
            state.powered_off.remove(node)
            state.save()
            self.env.state = state
            return (f"{node}: rebuilt with {len(pods)} pod(s) {[pp.name for pp in pods]}, "
                    f"ready in {time.monotonic() - start:.2f} s")
