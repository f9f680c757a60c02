"""The local lab's cluster DNS: a real ``dnsmasq`` at the kube-dns ClusterIP ``10.96.0.10``.

Where it runs, and why: the ``kube-dns`` pod lives on a control-plane host of its own, the
netns ``ml-<lab>-dns``, plugged into the underlay bridge like a node (kind runs CoreDNS on
its control-plane node), at the underlay's last host address (172.18.255.254). No lab node
hosts it, so a node power-off of a worker (DESIGN.md §5.1) does not take DNS down with it, and
its routes to every node's pod CIDR (via the node's underlay IP, host-gw) survive a node power
cycle. Every node's kube-proxy rules (:mod:`meshlab.envs.local.kube_proxy`) carry the
``kube-system/kube-dns`` Service like any other: ``dns`` (UDP 53) and ``dns-tcp`` (TCP 53)
DNAT to the server, so a pod's query keeps its pod IP as source — which is how the per-pod
query counts are taken.

What it serves (Kubernetes' DNS spec, ``dns-spec.md``): ``<svc>.<ns>.svc.<domain>`` → the
ClusterIP, ``<pod>.<svc>.<ns>.svc.<domain>`` → the pod IP for StatefulSet pods (their
``serviceName`` is the workload name in the lab), and ``kube-dns.kube-system.svc.<domain>``.
An unknown name in the cluster domain gets NXDOMAIN (``local=/<domain>/``). Nothing is ever
forwarded: ``no-resolv`` (no upstream servers), ``no-hosts``, and it listens only on its lab
address (``listen-address`` + ``bind-interfaces``), so a name outside the lab is REFUSED and
no packet leaves the lab.

Query counts: ``log-queries`` writes one ``query[<type>] <name> from <ip>`` line per query to
``<state>/kube-dns/queries.log``; a dns-error fault front (:mod:`meshlab.envs.local.dns_front`)
writes the same lines to ``front.log``. :func:`query_counts` maps those source IPs to pods.

The pid, netns, address and files are recorded in :attr:`LabState.dns` before the process
starts; ``cleanup`` kills it and deletes its netns with the lab's others (by prefix).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from meshlab.envs.base import run_argv
from meshlab.envs.local.kube_proxy import ServicePortNat
from meshlab.envs.local.netns import NetnsShell, add_netns, process_alive
from meshlab.envs.local.plan import LabPlan, lab_prefix
from meshlab.envs.local.state import LabState
from meshlab.errors import LabError
from meshlab.polling import PollTimeout, wait_until

DNSMASQ_BIN = "/usr/sbin/dnsmasq"
NAMESPACE = "kube-system"
SERVICE = "kube-dns"
PORT = 53
#: The underlay-side veth end of the DNS host (in the cluster netns, on ``ul0``).
UPLINK = "dns0"
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
_QUERY_LINE = re.compile(r"query\[[A-Za-z0-9]+\] \S+ from (\d+\.\d+\.\d+\.\d+)")


def netns_name(lab: str) -> str:
    """The DNS host's netns, ``ml-<lab>-dns``."""
    return f"{lab_prefix(lab)}dns"


def server_ip(plan: LabPlan) -> str:
    """The DNS host's underlay address: the underlay's last host address (172.18.255.254)."""
    net = ipaddress.ip_network(plan.topology.cluster.underlay_cidr)
    return str(net.broadcast_address - 1)


def cluster_dns_ip(plan: LabPlan) -> str:
    """The kube-dns ClusterIP: the service CIDR's 10th address (kubeadm's rule, 10.96.0.10)."""
    return str(ipaddress.ip_network(plan.topology.cluster.service_cidr).network_address + 10)


def dns_dir(lab: str) -> Path:
    """The DNS server's folder under the lab's state dir (config, query logs)."""
    return LabState.dir_for(lab) / "kube-dns"


def records(plan: LabPlan) -> list[tuple[str, str]]:
    """``(fqdn, IPv4)`` of every name the cluster DNS answers: Services, StatefulSet pods and
    kube-dns itself, in a stable order."""
    topo = plan.topology
    domain = topo.cluster.cluster_domain
    out = [(f"{SERVICE}.{NAMESPACE}.svc.{domain}", cluster_dns_ip(plan))]
    out += [(svc.fqdn(domain), plan.cluster_ip(svc)) for svc in topo.services]
    for pp in plan.pods.values():
        wl = pp.pod.workload
        if wl.kind == "StatefulSet":
            out.append((f"{pp.name}.{wl.name}.{pp.pod.namespace}.svc.{domain}", pp.ip))
    return out


def dnsmasq_config(plan: LabPlan, log_path: Path) -> str:
    """The dnsmasq configuration (``--conf-file``): local records only, never forwarding."""
    domain = plan.topology.cluster.cluster_domain
    lines = ["no-resolv", "no-hosts", "no-poll", "bind-interfaces",
             f"listen-address={server_ip(plan)}", f"port={PORT}", "user=root",
             f"local=/{domain}/", "domain-needed", "bogus-priv", "log-queries",
             f"log-facility={log_path}", "cache-size=0"]
    lines += [f"host-record={name},{ip}" for name, ip in records(plan)]
    return "\n".join(lines) + "\n"


def service_ports(plan: LabPlan) -> list[ServicePortNat]:
    """The ``kube-system/kube-dns`` Service ports for kube-proxy: ``dns`` UDP 53 and
    ``dns-tcp`` TCP 53, each with the DNS host as its one endpoint."""
    ep = ((server_ip(plan), PORT),)
    return [ServicePortNat(NAMESPACE, SERVICE, name, cluster_dns_ip(plan), PORT, ep,
                           protocol=proto)
            for name, proto in (("dns", "udp"), ("dns-tcp", "tcp"))]


def build(plan: LabPlan, state: LabState) -> None:
    """Create the DNS host on the underlay and start dnsmasq in it (recorded in ``state``
    first); return once it answers.

    Raises:
        LabError: dnsmasq is missing, exited, or did not answer within 10 s.
    """
    if not Path(DNSMASQ_BIN).exists():
        raise LabError(f"cluster DNS: {DNSMASQ_BIN} is missing (install dnsmasq-base: "
                       f"scripts/setup.sh)")
    netns, c = netns_name(plan.lab), plan.cluster_netns
    state.netns.append(netns)
    state.save()
    add_netns(netns, c)
    prefix_len = ipaddress.ip_network(plan.topology.cluster.underlay_cidr).prefixlen
    run_argv(["ip", "-n", c, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0",
              "netns", netns])
    run_argv(["ip", "-n", c, "link", "set", UPLINK, "master", "ul0", "up"])
    run_argv(["ip", "-n", netns, "addr", "add", f"{server_ip(plan)}/{prefix_len}", "dev", "eth0"])
    run_argv(["ip", "-n", netns, "link", "set", "eth0", "up"])
    for node in plan.nodes.values():  # replies to pods: host-gw, via each node's underlay IP
        run_argv(["ip", "-n", netns, "route", "add", node.pod_cidr, "via", node.ip])
    folder = dns_dir(plan.lab)
    folder.mkdir(parents=True, exist_ok=True)
    conf, log = folder / "dnsmasq.conf", folder / "queries.log"
    conf.write_text(dnsmasq_config(plan, log))
    log.touch()
    proc = NetnsShell(netns, SERVICE).popen(
        [DNSMASQ_BIN, "--keep-in-foreground", f"--conf-file={conf}", "--pid-file="],
        stdout=folder / "dnsmasq.out", stderr=folder / "dnsmasq.out")
    state.dns = {"pid": proc.pid, "netns": netns, "ip": server_ip(plan),
                 "cluster_ip": cluster_dns_ip(plan), "config": str(conf), "log": str(log)}
    state.save()
    wait_ready(plan, proc.pid)


def _answers(netns: str, ip: str, name: str) -> bool:
    res = NetnsShell(netns).run(["dig", "+short", "+time=1", "+tries=1", f"@{ip}", name],
                                check=False, timeout_s=5)
    return res.returncode == 0 and is_ipv4(res.stdout.strip())


def is_ipv4(text: str) -> bool:
    """Whether ``text`` is one dotted IPv4 address (``dig +short``'s answer, not its error)."""
    return _IPV4.fullmatch(text) is not None


def wait_ready(plan: LabPlan, pid: int, timeout_s: float = 10.0) -> None:
    """Poll until dnsmasq answers kube-dns's own name on its address.

    Raises:
        LabError: the process exited or did not answer within ``timeout_s``.
    """
    netns, ip = netns_name(plan.lab), server_ip(plan)
    name = records(plan)[0][0]
    try:
        wait_until(lambda: not process_alive(pid) or _answers(netns, ip, name),
                   timeout_s=timeout_s, what="cluster DNS answering", every_s=0.05)
    except PollTimeout as exc:
        raise LabError(f"cluster DNS: {exc}{log_tail(plan.lab)}") from None
    if not process_alive(pid):
        raise LabError(f"cluster DNS: dnsmasq exited at start{log_tail(plan.lab)}")


def log_tail(lab: str, lines: int = 5) -> str:
    """The last lines of dnsmasq's output, for error messages ("" when there are none)."""
    out = dns_dir(lab) / "dnsmasq.out"
    try:
        text = out.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; dnsmasq: " + " | ".join(text)) if text else ""


class _LogTail:
    """Query counts by source address of one growing log, reading only what was appended since
    the last look (a file replaced or cut short is read again from its start)."""

    def __init__(self) -> None:
        self.by_ip: Counter[str] = Counter()
        self._reset(-1)

    def _reset(self, inode: int) -> None:
        self.inode, self.offset, self.rest = inode, 0, b""
        self.by_ip.clear()

    def update(self, path: Path) -> Counter[str]:
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self._reset(st.st_ino)
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return self.by_ip
        self.offset += len(data)
        lines, _, self.rest = (self.rest + data).rpartition(b"\n")
        self.by_ip.update(m.group(1) for m in _QUERY_LINE.finditer(lines.decode(errors="replace")))
        return self.by_ip


_TAILS: dict[str, _LogTail] = {}


def query_counts(plan: LabPlan, state: LabState) -> dict[str, int]:
    """DNS queries each pod has sent to kube-dns since ``up``: ``{pod name: count}`` (every
    pod listed, 0 included), from dnsmasq's query log and a fault front's (a front's relays to
    dnsmasq come from the DNS host's own address and are not counted twice). Each call reads
    only the lines appended since this process's previous call (a collector asks every tick)."""
    by_ip = {pp.ip: pp.name for pp in plan.pods.values()}
    counts = dict.fromkeys(plan.pods, 0)
    folder = Path(state.dns.get("log", dns_dir(plan.lab) / "queries.log")).parent
    for name in ("queries.log", "front.log"):
        path = folder / name
        for ip, n in _TAILS.setdefault(str(path), _LogTail()).update(path).items():
            pod = by_ip.get(ip)
            if pod is not None:
                counts[pod] += n
    return counts


def describe(state: LabState) -> dict[str, Any]:
    """The DNS facts for the run journal: ``{"cluster_ip", "server_ip", "netns"}`` (empty
    before ``up``)."""
    return {k: state.dns[k] for k in ("cluster_ip", "ip", "netns") if k in state.dns}
