"""``dns-error`` on a real lab: kube-dns answers NXDOMAIN, SERVFAIL or nothing for the names
matching the patterns (all of them at 100 %, a share at a probability), other names are relayed
unharmed, the queries stay counted per pod, and revert leaves no front and no rule."""

from __future__ import annotations

import pytest
from dns_probe import addresses, ask, rcode

from meshlab.errors import ConfigError
from meshlab.faults.base import active
from meshlab.faults.dns_error import DnsError
from meshlab.faults.registry import create
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "dn3"
L2_FQDN = "fortio-server-l2.mark.svc.cluster.local"
L1_FQDN = "fortio-server.mark.svc.cluster.local"


def _client(lab) -> str:
    return lab.netns_of("pod", "netshoot")


@pytest.mark.parametrize("action,expected", [("nxdomain", "NXDOMAIN"),
                                             ("servfail", "SERVFAIL"),
                                             ("timeout", "TIMEOUT")])
def test_matching_names_fail_at_100_pct_and_others_are_relayed(lab, unchanged, action,
                                                                expected):
    ns = _client(lab)
    l1_ip = addresses(ask(ns, L1_FQDN))
    with active(DnsError(patterns=["fortio-server-l2.*"], action=action), lab):
        for name in (L2_FQDN, "fortio-server-l2.mark.mark.svc.cluster.local"):
            assert rcode(ask(ns, name, timeout_s=1.0)) == expected, name
        assert addresses(ask(ns, L1_FQDN)) == l1_ip  # not matching: dnsmasq's answer
        tcp = lab.pod_shell("netshoot").run(["dig", "+tcp", "+time=1", "+tries=1",
                                             "@10.96.0.10", L2_FQDN], check=False)
        if action == "timeout":
            assert tcp.returncode != 0
        else:
            assert f"status: {expected}" in tcp.stdout
    assert rcode(ask(ns, L2_FQDN)) == "NOERROR"  # revert restores answers


def test_probability_fails_a_share_and_counts_stay_per_pod(lab, unchanged):
    ns = _client(lab)
    n = 200
    before = lab.dns_query_counts()["netshoot-0"]
    with active(DnsError(patterns="fortio-server-l2.*", action="nxdomain",
                         probability_pct=50), lab):
        codes = [rcode(ask(ns, L2_FQDN)) for _ in range(n)]
        counted = wait_until(lambda: lab.dns_query_counts()["netshoot-0"],
                             lambda c: c >= before + n, timeout_s=5,
                             what="the front's queries counted")
    failed = codes.count("NXDOMAIN")
    assert codes.count("NOERROR") + failed == n
    # binomial(200, 0.5): sd 7.1; ±6 sd cannot flake (p < 1e-8)
    assert 58 <= failed <= 142, failed
    assert counted == before + n  # each query counted once (front relays are not pods)


def test_zero_percent_fails_nothing(lab, unchanged):
    ns = _client(lab)
    with active(DnsError(patterns=["*"], action="servfail", probability_pct=0), lab):
        assert all(rcode(ask(ns, L2_FQDN)) == "NOERROR" for _ in range(20))


def test_a_fresh_instance_reverts_it_and_a_second_fault_is_refused(lab, unchanged):
    fault = DnsError(patterns=["fortio-server-l2.*"], action="servfail")
    fault.inject(lab)
    try:
        with pytest.raises(ConfigError, match="one dns-error fault at a time"):
            DnsError(patterns=["x.*"]).inject(lab)
        assert rcode(ask(_client(lab), L2_FQDN)) == "SERVFAIL"
    finally:
        out = create("dns-error", patterns=fault.patterns, fault_id=fault.fault_id).revert(lab)
    assert "2 redirect rule(s) removed" in out and "stopped" in out
    assert "nothing" not in fault.revert(lab).split(":")[0]  # idempotent
    assert rcode(ask(_client(lab), L2_FQDN)) == "NOERROR"


@pytest.mark.parametrize("params,field", [
    ({"patterns": []}, "patterns"), ({"patterns": "a b"}, "patterns"),
    ({"patterns": ["x.*"], "action": "drop"}, "action"),
    ({"patterns": ["x.*"], "probability_pct": 101}, "probability_pct"),
    ({"patterns": ["x.*"], "probability_pct": True}, "probability_pct"),
    ({"patterns": ["x.*"], "fault_id": "XY"}, "fault_id")])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ConfigError, match=f"dns-error: {field}:"):
        DnsError(**params)


def test_the_deadman_reverts_it_when_the_runner_is_gone(lab, unchanged):
    """The runner never reverts (as after ``kill -9``): past ``max_duration_s`` the detached
    deadman rebuilds the fault from its ledger entry and removes the front and the rules."""
    from meshlab.envs.local.state import LabState
    from meshlab.faults.base import start, stop

    fault = DnsError(patterns=["fortio-server-l2.*"], action="servfail")
    entry, _ = start(fault, lab, max_duration_s=1.0)
    try:
        assert rcode(ask(_client(lab), L2_FQDN)) == "SERVFAIL"
        wait_until(lambda: LabState.load(lab.lab).dns.get("front_pid"), lambda pid: not pid,
                   timeout_s=20, what="the deadman stopped the front")
        assert rcode(ask(_client(lab), L2_FQDN)) == "NOERROR"
    finally:
        _, last = stop(fault, lab, entry)
    assert last is not None and last["reverted_by"] == "deadman"
