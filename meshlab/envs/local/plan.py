"""The local lab's plan: netns names, interfaces and addresses for a topology (no I/O).

Layout (DESIGN.md §3)::

    ml-<lab>-c            cluster netns: underlay bridge ``ul0`` (no address needed)
    ml-<lab>-n<i>         node i: ``eth0`` 172.18.0.(i+2)/16 on the underlay, bridge ``cni0``
                          10.244.(i+1).1/24, routes to the other nodes' pod CIDRs (host-gw CNI),
                          kube-proxy-style Service DNAT in its nat table
    ml-<lab>-p-<pod>      pod: ``eth0`` 10.244.(i+1).(j+2)/24, default route via the node bridge

All names start with ``ml-<lab>-`` so a dead lab's leftovers can be found by prefix alone.
Interface names stay within Linux's 15 characters.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from meshlab.errors import ConfigError
from meshlab.model import Pod, Service, Topology

NETNS_PREFIX = "ml-"


def lab_prefix(lab: str) -> str:
    """Prefix of every netns of lab ``lab`` (``ml-<lab>-``)."""
    return f"{NETNS_PREFIX}{lab}-"


@dataclass(frozen=True)
class NodePlan:
    """Addresses of one node: ``index`` on the underlay, ``ip``, ``pod_cidr``, ``gateway``."""

    name: str
    index: int
    netns: str
    ip: str
    prefix_len: int
    pod_cidr: str
    gateway: str
    uplink: str  # veth end in the cluster netns


@dataclass(frozen=True)
class PodPlan:
    """Addresses of one pod: its ``netns``, ``ip`` and the node-side veth ``host_if``."""

    pod: Pod
    netns: str
    ip: str
    prefix_len: int
    node: NodePlan
    host_if: str

    @property
    def name(self) -> str:
        """The pod name, e.g. ``fortio-server-0``."""
        return self.pod.name


@dataclass
class LabPlan:
    """The whole plan: cluster netns, nodes, pods, Service ClusterIPs.

    Attributes:
        lab: lab name (``[a-z0-9]{1,8}``).
        topology: the parsed manifests.
        cluster_netns: name of the cluster (underlay) netns.
        nodes: node name → plan.
        pods: pod name → plan.
        cluster_ips: ``namespace/name`` of each Service → ClusterIP.
        unready: pods left out of every Service's endpoints (not ready now: the kubelet's
            ``LabState.unready``, applied by :func:`meshlab.envs.local.istio_push.pushed_plan`).
    """

    lab: str
    topology: Topology
    cluster_netns: str
    nodes: dict[str, NodePlan] = field(default_factory=dict)
    pods: dict[str, PodPlan] = field(default_factory=dict)
    cluster_ips: dict[str, str] = field(default_factory=dict)
    unready: frozenset[str] = frozenset()

    def all_netns(self) -> list[str]:
        """Every netns the lab creates, cluster first (creation order)."""
        return ([self.cluster_netns] + [n.netns for n in self.nodes.values()]
                + [p.netns for p in self.pods.values()])

    def pods_on(self, node: str) -> list[PodPlan]:
        """Planned pods scheduled on node ``node``, in schedule order."""
        return [pp for pp in self.pods.values() if pp.node.name == node]

    def cluster_ip(self, svc: Service) -> str:
        """The ClusterIP assigned to a Service."""
        return self.cluster_ips[f"{svc.namespace}/{svc.name}"]

    def endpoints(self, svc: Service, keep: str | None = None) -> list[PodPlan]:
        """The ready pods behind a Service (the Endpoints' ready addresses); ``keep`` is a pod
        kept even while not ready (a sidecar always knows its own pod's inbound)."""
        return [self.pods[p.name] for p in self.topology.endpoints(svc)
                if p.name not in self.unready or p.name == keep]


def make_plan(topology: Topology, lab: str = "lab") -> LabPlan:
    """Assign netns names and addresses for ``topology``.

    Args:
        topology: validated topology.
        lab: short lab name; several labs can coexist under different names.

    Returns:
        The deterministic :class:`LabPlan`.

    Raises:
        ConfigError: a bad lab name, or more nodes/pods/services than the ranges hold.
    """
    if not re.fullmatch(r"[a-z0-9]{1,8}", lab):
        raise ConfigError(f"lab name {lab!r}: use 1-8 lowercase letters or digits")
    cl = topology.cluster
    underlay = ipaddress.ip_network(cl.underlay_cidr)
    pod_net = ipaddress.ip_network(cl.pod_cidr)
    svc_net = ipaddress.ip_network(cl.service_cidr)
    node_subnets = list(pod_net.subnets(new_prefix=24)) if pod_net.prefixlen <= 24 else []
    if len(cl.nodes) + 1 > len(node_subnets) or len(cl.nodes) + 2 >= underlay.num_addresses:
        raise ConfigError(f"{cl.source}: LabCluster.spec: too many nodes for the address ranges")
    prefix = lab_prefix(lab)
    plan = LabPlan(lab=lab, topology=topology, cluster_netns=f"{prefix}c")
    for i, node in enumerate(cl.nodes):
        subnet = node_subnets[i + 1]
        plan.nodes[node.name] = NodePlan(
            name=node.name, index=i, netns=f"{prefix}n{i}", ip=str(underlay.network_address + i + 2),
            prefix_len=underlay.prefixlen, pod_cidr=str(subnet),
            gateway=str(subnet.network_address + 1), uplink=f"n{i}")
    per_node: dict[str, int] = {}
    for pod in topology.pods():
        node = plan.nodes[pod.node]
        j = per_node.get(pod.node, 0)
        per_node[pod.node] = j + 1
        if j + 2 >= 255:
            raise ConfigError(f"node {pod.node}: more than 252 pods")
        subnet = ipaddress.ip_network(node.pod_cidr)
        plan.pods[pod.name] = PodPlan(pod=pod, netns=f"{prefix}p-{pod.name}",
                                      ip=str(subnet.network_address + j + 2), prefix_len=24,
                                      node=node, host_if=f"v{node.index}p{j}")
    dns_ip = str(svc_net.network_address + 10)  # kube-dns's (meshlab.envs.local.kube_dns)
    for k, svc in enumerate(topology.services):
        ip = svc.cluster_ip or str(svc_net.network_address + 11 + k)
        if ip == dns_ip:
            raise ConfigError(f"{svc.source}: Service/{svc.name}.spec.clusterIP: {ip} is the "
                              f"cluster DNS address (kube-system/kube-dns)")
        if ipaddress.ip_address(ip) not in svc_net:
            raise ConfigError(f"{svc.source}: Service/{svc.name}.spec.clusterIP: {ip} is outside "
                              f"the service CIDR {svc_net}")
        plan.cluster_ips[f"{svc.namespace}/{svc.name}"] = ip
    return plan
