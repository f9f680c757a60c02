"""The lab's cluster DNS for real: dnsmasq at the kube-dns ClusterIP, asked from inside pods
over UDP and TCP (kube-proxy NAT), its records, its refusal to leave the lab, the pods'
resolv.conf/hosts, and the per-pod query counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from dns_probe import KUBE_DNS, addresses, ask, rcode

from meshlab.envs.local import kube_dns
from meshlab.envs.local.netns import ETC_NETNS, NetnsShell
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "dn1"


@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab(LAB) as env:
        yield env


def _netns(lab, pod: str) -> str:
    return lab.netns_of("pod", pod)


def _ip(lab, service: str) -> str:
    return next(s["cluster_ip"] for s in lab.describe()["topology"]["services"]
                if s["name"] == service)


def test_service_and_pod_records_resolve_over_udp_and_tcp(lab):
    ns = _netns(lab, "netshoot")
    l2 = _ip(lab, "fortio-server-l2")
    assert l2 != KUBE_DNS  # the kube-dns address is never given to a Service
    assert addresses(ask(ns, "fortio-server-l2.mark.svc.cluster.local")) == [l2]
    pod = lab.pod("fortio-server-l2-0")
    assert addresses(ask(ns, "fortio-server-l2-0.fortio-server-l2.mark.svc.cluster.local")) \
        == [pod.ip]
    assert addresses(ask(ns, "kube-dns.kube-system.svc.cluster.local")) == [KUBE_DNS]
    tcp = lab.pod_shell("netshoot").run(["dig", "+tcp", "+short", "+time=2", "+tries=1",
                                         f"@{KUBE_DNS}", "fortio-server.mark.svc.cluster.local"])
    assert tcp.stdout.split() == [_ip(lab, "fortio-server")]


def test_unknown_cluster_name_is_nxdomain_and_outside_names_never_leave(lab):
    ns = _netns(lab, "netshoot")
    assert rcode(ask(ns, "nosuch.mark.svc.cluster.local")) == "NXDOMAIN"
    dns_ns = lab.state.dns["netns"]
    shell = NetnsShell(dns_ns)
    assert shell.run(["ip", "route", "show", "default"]).stdout.strip() == ""  # nowhere to go
    before = _udp_out(shell)
    for name in ("example.com", "www.example.org"):
        assert rcode(ask(ns, name)) == "REFUSED"
    assert _udp_out(shell) - before == 2  # the two replies, no forwarded query
    conf = Path(lab.state.dns["config"]).read_text()
    assert "no-resolv" in conf.split() and "server=" not in conf


def _udp_out(shell: NetnsShell) -> int:
    lines = [x.split() for x in shell.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if x.startswith("Udp:")]
    return int(lines[1][lines[0].index("OutDatagrams")])


def test_pods_resolve_names_through_dns_with_the_kubernetes_search_path(lab):
    pod = lab.pod("fortio-server")
    resolv = (ETC_NETNS / _netns(lab, "fortio-server") / "resolv.conf").read_text()
    search = "search mark.svc.cluster.local svc.cluster.local cluster.local"
    assert resolv.splitlines() == [search, f"nameserver {KUBE_DNS}", "options ndots:5"]
    hosts = (ETC_NETNS / _netns(lab, "fortio-server") / "hosts").read_text()
    assert "fortio-server-l2" not in hosts and pod.name in hosts
    before = lab.dns_query_counts()
    res = lab.pod_shell("fortio-server").run(["getent", "ahostsv4", "fortio-server-l2"])
    assert res.stdout.split()[0] == _ip(lab, "fortio-server-l2")
    after = wait_until(lab.dns_query_counts, lambda c: c[pod.name] > before[pod.name],
                       timeout_s=5, what="the lookup counted")
    assert 1 <= after[pod.name] - before[pod.name] <= 2  # A (+AAAA) of the first search name
    assert after["netshoot-0"] == before["netshoot-0"]


def test_query_counts_rise_by_what_each_pod_sent(lab):
    before = lab.dns_query_counts()
    for _ in range(5):
        assert rcode(ask(_netns(lab, "netshoot"), "fortio-server.mark.svc.cluster.local")) \
            == "NOERROR"
    for _ in range(3):
        ask(_netns(lab, "fortio-server-l2"), "nosuch.mark.svc.cluster.local")
    after = wait_until(lab.dns_query_counts,
                       lambda c: c["netshoot-0"] - before["netshoot-0"] >= 5
                       and c["fortio-server-l2-0"] - before["fortio-server-l2-0"] >= 3,
                       timeout_s=5, what="queries counted")
    assert after["netshoot-0"] - before["netshoot-0"] == 5
    assert after["fortio-server-l2-0"] - before["fortio-server-l2-0"] == 3
    assert after["fortio-server-0"] == before["fortio-server-0"]
    assert set(kube_dns.describe(lab.state)) == {"cluster_ip", "ip", "netns"}
