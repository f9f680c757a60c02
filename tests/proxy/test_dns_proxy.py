"""Istio DNS proxying (``ISTIO_META_DNS_CAPTURE``): the capture rules for port 53, the sidecar's
name table, and, on a real lab with the ``dns-capture`` overlay, the proxy answering L1's queries
for mesh Services itself (kube-dns never asked) and forwarding the rest to kube-dns."""

from __future__ import annotations

import pytest
from dns_probe import KUBE_DNS, addresses, ask, rcode

from meshlab.envs.local.istio_iptables import CaptureConfig, capture_rules
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS, manifest_set
from meshlab.polling import wait_until
from meshlab.proxy.config.sidecar import parse_config
from meshlab.proxy.dns.table import NameTable

LAB = "dn2"
L1 = "fortio-server"
L2_FQDN = "fortio-server-l2.mark.svc.cluster.local"


def test_capture_rules_redirect_port_53_except_the_proxy_own_queries():
    rules = capture_rules(CaptureConfig(dns_servers=("10.96.0.10",))).splitlines()
    udp = [r for r in rules if r.startswith("-A OUTPUT -") and "udp" in r]
    assert udp == ["-A OUTPUT -p udp -m udp --dport 53 -m owner --uid-owner 1337 -j RETURN",
                   "-A OUTPUT -p udp -m udp --dport 53 -m owner --gid-owner 1337 -j RETURN",
                   ("-A OUTPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT "
                    "--to-ports 15053")]
    tcp = rules.index("-A ISTIO_OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j REDIRECT "
                      "--to-ports 15053")
    assert tcp > rules.index("-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN")
    assert tcp < rules.index("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    assert "15053" not in capture_rules()  # off by default


def _table(pod_ns: str = "mark") -> NameTable:
    svc = {"name": "fortio-server-l2", "namespace": "mark", "fqdn": L2_FQDN,
           "cluster_ip": "10.96.0.11", "ports": [{"port": 8080, "name": "http"}]}
    other = {**svc, "name": "web", "namespace": "shop", "fqdn": "web.shop.svc.cluster.local",
             "cluster_ip": "10.96.0.20"}
    return NameTable(parse_config({"pod": {"name": "p", "namespace": pod_ns, "ip": "10.244.1.2"},
                                   "services": [svc, other], "dns_capture": True}))


def test_name_table_has_the_fqdn_short_forms_and_search_expansions():
    table = _table()
    for name in (L2_FQDN, "fortio-server-l2.mark.svc", "fortio-server-l2.mark",
                 "fortio-server-l2", "FORTIO-SERVER-L2.mark.svc.cluster.local."):
        hit = table.lookup(name)
        assert hit is not None and hit.addresses == ("10.96.0.11",) and not hit.cname, name
    hit = table.lookup("fortio-server-l2.mark.mark.svc.cluster.local")
    assert hit is not None and hit.cname and hit.canonical == L2_FQDN + "."
    assert table.lookup("web") is None  # another namespace's bare name is not ours
    assert table.lookup("web.shop").addresses == ("10.96.0.20",)
    assert table.lookup("web.shop.svc.cluster.local.mark.svc.cluster.local") is None
    assert table.lookup("nosuch.mark.svc.cluster.local") is None


@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab(LAB, manifests=manifest_set(DEFAULT_MANIFESTS, ("dns-capture",))) as env:
        yield env


def _count(lab) -> int:
    return lab.dns_query_counts()[lab.pod(L1).name]


@pytest.mark.lab
def test_proxy_answers_mesh_services_without_asking_kube_dns(lab):
    ns = lab.netns_of("pod", L1)
    l2_ip = next(s["cluster_ip"] for s in lab.describe()["topology"]["services"]
                 if s["name"] == "fortio-server-l2")
    before = _count(lab)
    assert addresses(ask(ns, L2_FQDN)) == [l2_ip]
    expanded = ask(ns, "fortio-server-l2.mark.mark.svc.cluster.local")
    assert [rs.rdtype for rs in expanded.answer] == [5, 1]  # CNAME, then A
    assert addresses(expanded) == [l2_ip]
    aaaa = ask(ns, L2_FQDN, "AAAA")
    assert rcode(aaaa) == "NOERROR" and aaaa.answer == []
    tcp = lab.pod_shell(L1).run(["dig", "+tcp", "+short", "+time=2", "+tries=1",
                                 f"@{KUBE_DNS}", "fortio-server-l2.mark"])
    assert tcp.stdout.split() == [l2_ip]
    res = lab.pod_shell(L1).run(["getent", "ahostsv4", "fortio-server-l2"])  # the app's way
    assert res.stdout.split()[0] == l2_ip
    unforwarded = ask(lab.netns_of("pod", "netshoot"), "nosuch.mark.svc.cluster.local")
    assert rcode(unforwarded) == "NXDOMAIN"  # a marker: once it is counted, ours would be too
    wait_until(lambda: lab.dns_query_counts()["netshoot-0"], lambda c: c > 0, timeout_s=5,
               what="netshoot's query counted")
    assert _count(lab) == before


@pytest.mark.lab
def test_proxy_forwards_unknown_names_and_its_own_queries_are_not_captured(lab):
    ns = lab.netns_of("pod", L1)
    before = _count(lab)
    assert rcode(ask(ns, "nosuch.mark.svc.cluster.local")) == "NXDOMAIN"
    pod = lab.pod("fortio-server-l2-0")
    assert addresses(ask(ns, f"{pod.name}.fortio-server-l2.mark.svc.cluster.local")) == [pod.ip]
    wait_until(lambda: _count(lab), lambda c: c >= before + 2, timeout_s=5,
               what="the forwarded queries counted for L1")
    as_proxy = lab.pod_shell(L1).run(
        ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "dig", "+short",
         "+time=2", "+tries=1", f"@{KUBE_DNS}", L2_FQDN])
    assert as_proxy.stdout.strip()  # uid 1337 goes to kube-dns itself: counted there
    wait_until(lambda: _count(lab), lambda c: c >= before + 3, timeout_s=5,
               what="uid 1337's query reached kube-dns")
    assert _count(lab) == before + 3
