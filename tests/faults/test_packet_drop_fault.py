"""``packet-drop`` on a real lab: the rules it writes, an exact and idempotent revert, parameter
errors naming the field, and packets really lost at the configured rate.

Loss is measured with UDP datagrams (UDP is not captured by the Istio rules, so they go
straight from netshoot to the target pod's socket): N numbered datagrams, count what arrives.
With p = 0.5 and N = 400 the received count is Binomial(400, 0.5) (σ = 10), so the band
[140, 260] is ±6σ wide; a fault applying its probability twice per packet (75 % loss, mean 100)
falls outside it. ``lab`` and ``unchanged`` are in ``conftest.py``.
"""

import dataclasses

import pytest
from udp_probe import udp_sequence

from meshlab.envs.local.lab import LocalEnv
from meshlab.errors import ConfigError
from meshlab.faults.packet_drop import PacketDrop
from meshlab.faults.registry import create
from meshlab.faults.reject_connections import RejectConnections

pytestmark = pytest.mark.lab
LAB = "hpd"
L1, L2, CLIENT = "fortio-server-0", "fortio-server-l2-0", "netshoot-0"
N_DATAGRAMS = 400
RECEIVED_BAND = (140, 260)  # 50 % ± 6σ of Binomial(400, 0.5)
UDP_PORT = 9999


def filter_rules(env, shell) -> list[str]:
    """``iptables-save -t filter`` of a shell's netns without comments and counters."""
    out = shell.run(["iptables-save", "-t", "filter"]).stdout.splitlines()
    return [line for line in out if line.startswith(("-A", ":MESHLAB"))]


def udp_received(env, sender: str, receiver: str, n: int = N_DATAGRAMS) -> int:
    """How many distinct numbered datagrams of ``n`` arrived (:func:`udp_sequence`)."""
    return len(set(udp_sequence(env, sender, receiver, n, UDP_PORT)))


def test_pod_rules_match_peer_port_and_revert_exactly(lab, unchanged):
    """target=L2, peer L1, port 8080, both: INPUT/OUTPUT hooks skip lo, one chain with the
    egress DROP, its RETURN guard and the ingress DROP; revert twice restores the rule set."""
    shell = lab.pod_shell(L2)
    before = filter_rules(lab, shell)
    fault = PacketDrop(target=L2, peer_pod=L1, peer_port=8080, drop_id="a1")
    assert "MESHLAB-PD-a1 from INPUT, OUTPUT" in fault.inject(lab)
    assert fault.inject(lab).startswith("already active")  # idempotent inject
    tag = '-m comment --comment "meshlab:packet-drop:a1"'
    ports = "-p tcp -m multiport --ports 8080"
    stat = "-m statistic --mode random --probability 0.50000000000"
    l1, l2 = "10.244.1.2/32", "10.244.2.2/32"
    assert lab.pod(L1).ip + "/32" == l1 and lab.pod(L2).ip + "/32" == l2
    assert filter_rules(lab, shell) == before + [
        ":MESHLAB-PD-a1 - [0:0]",
        f"-A INPUT ! -i lo {tag} -j MESHLAB-PD-a1",
        f"-A OUTPUT ! -o lo {tag} -j MESHLAB-PD-a1",
        f"-A MESHLAB-PD-a1 -s {l2} -d {l1} {ports} {stat} {tag} -j DROP",
        f"-A MESHLAB-PD-a1 -s {l2} -d {l1} {ports} {tag} -j RETURN",
        f"-A MESHLAB-PD-a1 -s {l1} -d {l2} {ports} {stat} {tag} -j DROP",
    ]
    assert fault.revert(lab) == f"{L2}: removed 2 hook rule(s) and chain MESHLAB-PD-a1"
    assert fault.revert(lab) == f"{L2}: removed 0 hook rule(s); no chain MESHLAB-PD-a1"
    assert filter_rules(lab, shell) == before


def test_node_rules_hook_forward_with_pod_cidr(lab, unchanged):
    """target=worknode6, ingress, p=0.2: one FORWARD jump, one DROP for ``-d <pod CIDR>``."""
    shell = lab.node_shell("worknode6")
    fault = PacketDrop(target="worknode6", direction="ingress", probability=0.2, drop_id="b2")
    fault.inject(lab)
    try:
        rules = [r for r in filter_rules(lab, shell) if "packet-drop:b2" in r]
        assert rules == [
            '-A FORWARD -m comment --comment "meshlab:packet-drop:b2" -j MESHLAB-PD-b2',
            ("-A MESHLAB-PD-b2 -d 10.244.2.0/24 -m statistic --mode random --probability "
             '0.20000000019 -m comment --comment "meshlab:packet-drop:b2" -j DROP'),
        ]
    finally:
        fault.revert(lab)
    assert fault.revert(lab).endswith("no chain MESHLAB-PD-b2")


def test_revert_removes_only_its_own_rules_from_a_fresh_instance(lab, unchanged):
    """Two drops and a reject in one pod: a fresh PacketDrop built from the first one's fields,
    on a fresh env object (as the deadman does), removes exactly the first one's rules."""
    shell = lab.pod_shell(L2)
    first = PacketDrop(target="fortio-server-l2", direction="egress")
    second = PacketDrop(target=L2, peer_cidr="10.244.1.0/24", probability=0.25)
    reject = RejectConnections(target=L2, port=8080)
    before = filter_rules(lab, shell)
    for fault in (second, reject):
        fault.inject(lab)
    with_others = filter_rules(lab, shell)
    first.inject(lab)
    try:
        fresh = PacketDrop(**dataclasses.asdict(first))
        assert "removed 1 hook rule(s)" in fresh.revert(LocalEnv(**_spec_args(lab)))
        assert filter_rules(lab, shell) == with_others
    finally:
        for fault in (first, second, reject):
            fault.revert(lab)
    assert filter_rules(lab, shell) == before


def _spec_args(env) -> dict:
    spec = env.spec()
    return {"manifests": spec["manifests"], "lab": spec["lab"]}


# --- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "field"), [
    ({"probability": 0}, "probability"),
    ({"probability": 1.5}, "probability"),
    ({"probability": True}, "probability"),
    ({"probability": "half"}, "probability"),
    ({"direction": "inbound"}, "direction"),
    ({"peer_pod": L1, "peer_cidr": "10.0.0.0/8"}, "peer_cidr"),
    ({"peer_pod": L1, "peer_service": "fortio-server"}, "peer_service"),
    ({"peer_cidr": "10.0.0.300/8"}, "peer_cidr"),
    ({"peer_cidr": "fd00::/64"}, "peer_cidr"),
    ({"peer_port": 0}, "peer_port"),
    ({"peer_port": "8080"}, "peer_port"),
    ({"drop_id": "x; rm"}, "drop_id"),
    ({"target": ""}, "target"),
])
def test_bad_parameter_names_the_field(params, field):
    """Construction (directly or through the registry) fails with the field named."""
    args = {"target": L2, **params}
    with pytest.raises(ConfigError, match=rf"packet-drop: {field}:"):
        PacketDrop(**args)
    with pytest.raises(ConfigError, match=rf"packet-drop: {field}:"):
        create("packet-drop", **args)


@pytest.mark.parametrize(("params", "field"), [
    ({"target": "no-such-pod"}, "target"),
    ({"target": L2, "peer_pod": "no-such-pod"}, "peer_pod"),
    ({"target": L1, "peer_service": "fortio-server-l2"}, "peer_service"),  # meshed pod
    ({"target": "worknode5", "peer_service": "fortio-server-l2"}, "peer_service"),  # node
    ({"target": CLIENT, "peer_service": "no-such-service"}, "peer_service"),
])
def test_unusable_target_or_peer_fails_before_any_rule(lab, unchanged, params, field):
    """Targets and peers the lab cannot resolve (or never sees) fail at inject, naming the
    field, and leave nothing behind."""
    with pytest.raises(ConfigError, match=rf"packet-drop: {field}:"):
        PacketDrop(**params).inject(lab)


def test_peer_service_on_unmeshed_pod_matches_the_cluster_ip(lab, unchanged):
    """netshoot sees the ClusterIP (kube-proxy DNATs in the node): the rules use it."""
    svc = next(s for s in lab.describe()["topology"]["services"] if s["name"] == "fortio-server")
    fault = PacketDrop(target="netshoot", peer_service="mark/fortio-server", direction="egress")
    fault.inject(lab)
    try:
        rules = [r for r in filter_rules(lab, lab.pod_shell(CLIENT)) if fault.drop_id in r]
        assert any(f"-d {svc['cluster_ip']}/32" in r and "-j DROP" in r for r in rules), rules
    finally:
        fault.revert(lab)


# --- loss ----------------------------------------------------------------------------------

def test_no_loss_without_fault(lab):
    """Control: every datagram arrives when no fault is active."""
    assert udp_received(lab, CLIENT, L2) == N_DATAGRAMS


@pytest.mark.parametrize("fault", [
    PacketDrop(target=L2, direction="ingress"),
    PacketDrop(target=L2, direction="both", peer_pod=CLIENT),
    PacketDrop(target="worknode6", direction="both"),
], ids=["pod-ingress", "pod-both-peer", "node-both"])
def test_half_of_the_datagrams_are_lost_across_nodes(lab, unchanged, fault):
    """netshoot (worknode5) → L2 (worknode6) with p=0.5: about half arrive."""
    with_fault(lab, fault, lambda: assert_band(udp_received(lab, CLIENT, L2)))


def test_same_node_traffic_meets_the_probability_once(lab, unchanged):
    """netshoot → L1 on worknode5 is bridged pod-to-pod traffic: it matches the node rule's
    egress *and* ingress selector, and still loses about half (not 75 %)."""
    fault = PacketDrop(target="worknode5", direction="both")
    with_fault(lab, fault, lambda: assert_band(udp_received(lab, CLIENT, L1)))


def with_fault(env, fault, body) -> None:
    fault.inject(env)
    try:
        body()
    finally:
        fault.revert(env)


def assert_band(received: int) -> None:
    low, high = RECEIVED_BAND
    assert low <= received <= high, f"{received} of {N_DATAGRAMS} datagrams arrived"
