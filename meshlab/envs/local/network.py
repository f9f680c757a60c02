"""Build the lab's network from a :class:`LabPlan`: namespaces, veths, bridges, routes, NAT.

Every command names its namespace (``ip -n`` / ``ip netns exec``); the host namespace is never
touched. Each namespace is recorded in the state file *before* it is created, so cleanup
after a crash finds it.
"""

from __future__ import annotations

from pathlib import Path

from meshlab.envs.base import run_argv
from meshlab.envs.local import istiod, kube_dns
from meshlab.envs.local.istio_iptables import CaptureConfig, capture_rules
from meshlab.envs.local.istio_push import pushed_plan
from meshlab.envs.local.kube_proxy import ServicePortNat, service_rules
from meshlab.envs.local.netns import ETC_NETNS, NetnsShell, add_netns, write_etc_netns
from meshlab.envs.local.plan import LabPlan, NodePlan, PodPlan
from meshlab.envs.local.state import LabState

UNDERLAY_BRIDGE = "ul0"
POD_BRIDGE = "cni0"


def _ip(netns: str, *args: str) -> None:
    run_argv(["ip", "-n", netns, *args])


#: Present (in every netns) once nf_conntrack is loaded; read here, never written.
CONNTRACK_EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"


def set_sysctl(state: LabState, netns: str, key: str, value: str) -> None:
    """Set a per-netns sysctl and record it in the state (the report lists the values used)."""
    NetnsShell(netns).run(["sysctl", "-qw", f"{key}={value}"])
    state.sysctls[f"{netns} {key}"] = value


#: TCP established-hash buckets of every node and pod netns (``tcp_child_ehash_entries`` of the
#: cluster netns they are created from). The host's table is shared by all namespaces and
#: sized for the machine (262144 buckets here): every ``sock_diag`` dump the collectors make
#: walks all of it in kernel time a sidecar cannot preempt; a lab netns's own table is walked in
#: microseconds. ``tcp_max_tw_buckets`` follows as half of it (8192 TIME-WAIT sockets).
POD_TCP_EHASH_BUCKETS = 16384
CHILD_EHASH_SYSCTL = "/proc/sys/net/ipv4/tcp_child_ehash_entries"


def _create(state: LabState, netns: str, parent: str | None = None) -> None:
    state.netns.append(netns)
    state.save()
    add_netns(netns, parent)


def build_cluster(plan: LabPlan, state: LabState) -> None:
    """The cluster netns with the underlay bridge (no address: nodes talk L2 over it); the
    node and pod namespaces are created from it (:data:`POD_TCP_EHASH_BUCKETS`)."""
    c = plan.cluster_netns
    _create(state, c)
    if Path(CHILD_EHASH_SYSCTL).exists():  # Linux >= 6.1 (read here, never written)
        set_sysctl(state, c, "net.ipv4.tcp_child_ehash_entries", str(POD_TCP_EHASH_BUCKETS))
    _ip(c, "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
    _ip(c, "link", "set", UNDERLAY_BRIDGE, "up")
    set_sysctl(state, c, "net.bridge.bridge-nf-call-iptables", "0")


def build_node(plan: LabPlan, state: LabState, node: NodePlan) -> None:
    """A node netns: uplink to the underlay, pod bridge, forwarding, routes to other nodes."""
    _create(state, node.netns, plan.cluster_netns)
    c = plan.cluster_netns
    _ip(c, "link", "add", node.uplink, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
    _ip(c, "link", "set", node.uplink, "master", UNDERLAY_BRIDGE, "up")
    _ip(node.netns, "addr", "add", f"{node.ip}/{node.prefix_len}", "dev", "eth0")
    _ip(node.netns, "link", "set", "eth0", "up")
    _ip(node.netns, "link", "add", POD_BRIDGE, "type", "bridge")
    _ip(node.netns, "addr", "add", f"{node.gateway}/24", "dev", POD_BRIDGE)
    _ip(node.netns, "link", "set", POD_BRIDGE, "up")
    set_sysctl(state, node.netns, "net.ipv4.ip_forward", "1")
    # kube-proxy needs bridged pod-to-pod replies to pass the nat table (br_netfilter).
    set_sysctl(state, node.netns, "net.bridge.bridge-nf-call-iptables", "1")


def route_node(plan: LabPlan, node: NodePlan) -> None:
    """host-gw routing: ``node`` reaches the other nodes' pod CIDRs via their underlay IP
    (the gateway is on-link, so the other nodes need not exist yet)."""
    for other in plan.nodes.values():
        if other.name != node.name:
            _ip(node.netns, "route", "add", other.pod_cidr, "via", other.ip)


def build_pod(plan: LabPlan, state: LabState, pp: PodPlan) -> None:
    """A pod netns on its node's bridge, with hosts/resolv.conf for Service names."""
    write_etc_netns(pp.netns, {"hosts": istiod.hosts_file(plan, pp),
                               "resolv.conf": istiod.resolv_conf(plan, pp),
                               "hostname": pp.name + "\n"})
    _create(state, pp.netns, plan.cluster_netns)
    node = pp.node
    _ip(node.netns, "link", "add", pp.host_if, "type", "veth", "peer", "name", "eth0",
        "netns", pp.netns)
    _ip(node.netns, "link", "set", pp.host_if, "master", POD_BRIDGE, "up")
    _ip(pp.netns, "addr", "add", f"{pp.ip}/{pp.prefix_len}", "dev", "eth0")
    _ip(pp.netns, "link", "set", "eth0", "up")
    _ip(pp.netns, "route", "add", "default", "via", node.gateway)


def program_services(plan: LabPlan, node: NodePlan, resync: bool = False) -> None:
    """kube-proxy: the Service NAT rules in ``node``'s netns (the same in every node), with
    the plan's ready endpoints; ``resync`` replaces the rules of a node programmed before
    (after an endpoint change) without adding the built-in chains' jumps again."""
    ports = []
    for svc in plan.topology.services:
        ready = plan.endpoints(svc)
        unready = [plan.pods[p.name] for p in plan.topology.endpoints(svc)
                   if p.name in plan.unready]
        for sp in svc.ports:
            ports.append(ServicePortNat(
                svc.namespace, svc.name, sp.name, plan.cluster_ip(svc), sp.port,
                tuple((ep.ip, sp.target_port) for ep in ready),
                tuple((ep.ip, sp.target_port) for ep in unready)))
    ports += kube_dns.service_ports(plan)  # kube-system/kube-dns: UDP and TCP 53
    NetnsShell(node.netns).run(["iptables-restore", "--noflush"],
                               input_text=service_rules(ports, jumps=not resync))


def install_capture(pp: PodPlan) -> None:
    """istio-init: the REDIRECT capture rules in a meshed pod's netns; with DNS capture
    (:func:`istiod.dns_capture`) also port 53 to the pod's resolv.conf nameservers, read from
    the pod's ``/etc/netns`` file as istio-iptables reads ``/etc/resolv.conf``."""
    cfg = CaptureConfig()
    if istiod.dns_capture(pp):
        resolv = ETC_NETNS / pp.netns / "resolv.conf"
        servers = [p[1] for p in (line.split() for line in resolv.read_text().splitlines())
                   if len(p) >= 2 and p[0] == "nameserver"]
        cfg = CaptureConfig(dns_servers=tuple(servers))
    NetnsShell(pp.netns).run(["iptables-restore", "--noflush"], input_text=capture_rules(cfg))


def build_node_with_pods(plan: LabPlan, state: LabState, node: NodePlan) -> None:
    """One node, network-side: its netns and uplink, its routes to the other nodes, its pods'
    netns (same IPs every time) with their capture rules, and its Service NAT. Used by ``up``
    for every node and by a node power-on (:mod:`meshlab.envs.local.node_power`) for one; the
    other nodes' routes to this node are not touched (they outlive a power cycle)."""
    build_node(plan, state, node)
    route_node(plan, node)
    for pp in plan.pods_on(node.name):
        build_pod(plan, state, pp)
        if pp.pod.meshed:
            install_capture(pp)
    program_services(pushed_plan(plan, state), node)
    for netns in (node.netns, *(pp.netns for pp in plan.pods_on(node.name))):
        enable_conntrack_events(state, netns)


def enable_conntrack_events(state: LabState, netns: str) -> None:
    """``nf_conntrack_events=1`` in a lab netns: every conntrack entry carries event support,
    also one created before a listener subscribed (the kernel default 2 gives it only to
    entries created while a listener exists). The collectors' ctnetlink reader
    (:mod:`meshlab.collectors.ctnetlink`) then follows the whole table from events, with no
    dump or per-entry lookup for entries older than the reader. The rules above have loaded
    nf_conntrack by now; a kernel without conntrack events is left as it is."""
    if Path(CONNTRACK_EVENTS_SYSCTL).exists():  # module loaded: the key exists in every netns
        set_sysctl(state, netns, "net.netfilter.nf_conntrack_events", "1")


def build_network(plan: LabPlan, state: LabState) -> None:
    """Everything network-side of ``up``: the cluster netns, then each node with its pods."""
    build_cluster(plan, state)
    for node in plan.nodes.values():
        build_node_with_pods(plan, state, node)
    kube_dns.build(plan, state)  # the cluster DNS, before any app resolves a name
