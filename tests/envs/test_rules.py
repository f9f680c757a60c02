"""The iptables text the lab programs is accepted by the real kernel (in a throwaway netns)
and has the shape of Istio's and kube-proxy's rules."""

import uuid

import pytest

from meshlab.envs.local.istio_iptables import capture_rules
from meshlab.envs.local.kube_proxy import ServicePortNat, chain_hash, service_rules
from meshlab.envs.local.netns import NetnsShell, add_netns, delete_netns

pytestmark = pytest.mark.lab


@pytest.fixture
def netns():
    name = f"mltest-rules-{uuid.uuid4().hex[:6]}"
    add_netns(name)
    try:
        yield NetnsShell(name)
    finally:
        delete_netns(name)


def test_istio_capture_rules_apply_and_match_istio_order(netns):
    netns.run(["iptables-restore", "--noflush"], input_text=capture_rules())
    saved = netns.run(["iptables-save", "-t", "nat"]).stdout
    out = [line for line in saved.splitlines() if line.startswith("-A ISTIO_OUTPUT")]
    assert out[0] == "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"
    assert "--uid-owner 1337 -j RETURN" in out[3] and out[-1] == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in saved
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in saved
    for port in (15008, 15090, 15021, 15020):
        assert f"-A ISTIO_INBOUND -p tcp -m tcp --dport {port} -j RETURN" in saved


def test_kube_proxy_rules_spread_endpoints_and_reject_empty_services(netns):
    eps = (("10.244.1.2", 8080), ("10.244.2.2", 8080), ("10.244.2.3", 8080))
    text = service_rules([ServicePortNat("mark", "a", "http", "10.96.0.10", 8080, eps),
                          ServicePortNat("mark", "b", "http", "10.96.0.11", 80, ())])
    netns.run(["iptables-restore", "--noflush"], input_text=text)
    nat = netns.run(["iptables-save", "-t", "nat"]).stdout
    svc = "KUBE-SVC-" + chain_hash("mark/a:httptcp")
    assert f"-j {svc}" in nat
    assert "--probability 0.33333333349" in nat and "--probability 0.50000000000" in nat
    assert nat.count("-j DNAT --to-destination") == 3
    flt = netns.run(["iptables-save", "-t", "filter"]).stdout
    assert "-d 10.96.0.11/32" in flt and "REJECT" in flt

