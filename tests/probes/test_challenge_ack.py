"""The challenge-ACK probe on the running kernel, and its verdict logic.

The real probe runs in its own pair of namespaces. Whatever the kernel, its evidence must hang
together: a challenge ACK and a RST were seen, the prediction follows the INVALID counter, and
the probe's own connect outcome matches the prediction (Linux 6.2+: the RST reaches and resets
the leaked socket, the retransmitted SYN connects; older: the RST is INVALID, never NATed,
connect() times out). The kernel version is recorded, not asserted.
"""

from pathlib import Path

import pytest

from meshlab.errors import ConfigError, LabError
from meshlab.probes import challenge_ack
from meshlab.probes.challenge_ack import (
    CONNECT_TIMEOUT,
    RESET_SUCCEEDS,
    ChallengeAckResult,
    _judge,
    probe_challenge_ack,
)
from meshlab.probes.sniff import Segment

PREFIX = "ml-hctp"


def leftover_netns() -> list[str]:
    root = Path("/run/netns")
    return [p.name for p in root.iterdir() if p.name.startswith(PREFIX)] if root.exists() else []


@pytest.mark.lab
def test_probe_evidence_is_consistent_with_its_prediction(host_snapshot):
    result = probe_challenge_ack(prefix=PREFIX, connect_timeout_s=3.0)
    print(result.to_dict())
    assert leftover_netns() == []
    assert result.challenge_ack_seen and result.rst_sent
    assert result.evidence["counters"]["rst-all"] == 1 or result.rst_invalid
    assert result.predicts == (CONNECT_TIMEOUT if result.rst_invalid else RESET_SUCCEEDS)
    assert result.consistent, result.to_dict()
    if result.predicts == RESET_SUCCEEDS:  # the RST left NATed to the server and reset it
        assert result.evidence["rst_on_wire_to"] == "192.168.254.2:9000"
        assert result.connected and result.connect_s < 2.0 and result.syn_count >= 2
    else:  # the INVALID RST was not NATed: it never reached the server
        assert result.evidence["rst_on_wire_to"] is None
        assert not result.connected and "timed out" in (result.error or "")


@pytest.mark.lab
def test_probe_removes_its_netns_when_a_step_fails(monkeypatch, host_snapshot):
    seen = []

    def fail(*_args):
        seen.append(leftover_netns())
        raise LabError("setup step failed")

    monkeypatch.setattr(challenge_ack, "_leak_server_socket", fail)
    with pytest.raises(LabError, match="setup step failed"):
        probe_challenge_ack(prefix=PREFIX)
    assert len(seen[0]) == 2 and leftover_netns() == []


@pytest.mark.parametrize("kwargs, field", [
    ({"client_port": 80}, "client_port"),
    ({"connect_timeout_s": 0.1}, "connect_timeout_s"),
    ({"prefix": "a/b"}, "prefix"),
])
def test_bad_arguments_raise_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        probe_challenge_ack(**kwargs)


def seg(t_s, src, dst, flags):
    return Segment(t_s=t_s, src=src, dst=dst, flags=flags, seq=1, ack=2)


C, S = "10.0.0.1:40000", "10.0.0.2:9000"


def test_judge_finds_the_challenge_ack_between_syn_and_synack():
    judged = _judge([seg(0.0, C, S, "S"), seg(0.001, S, C, "A"), seg(0.002, C, S, "R"),
                     seg(0.015, C, S, "S"), seg(0.016, S, C, "SA"), seg(0.017, C, S, "A")], C)
    assert judged["challenge_ack_seen"] and judged["syn_count"] == 2
    assert judged["rst_on_wire_to"] == S and len(judged["segments"]) == 6


def test_judge_ignores_the_handshake_ack():
    judged = _judge([seg(0.0, C, S, "S"), seg(0.001, S, C, "SA"), seg(0.002, S, C, "A")], C)
    assert not judged["challenge_ack_seen"] and judged["rst_on_wire_to"] is None


def result(predicts, connected, leaked):
    return ChallengeAckResult(kernel="x", challenge_ack_seen=True, rst_sent=True,
                              rst_invalid=predicts == CONNECT_TIMEOUT, connected=connected,
                              connect_s=0.1, error=None if connected else "timed out",
                              leaked_state_after=leaked, syn_count=2, predicts=predicts)


@pytest.mark.parametrize("predicts, connected, leaked, consistent", [
    (RESET_SUCCEEDS, True, "CLOSE", True),
    (RESET_SUCCEEDS, False, "FIN_WAIT2", False),
    (CONNECT_TIMEOUT, False, "FIN_WAIT2", True),
    (CONNECT_TIMEOUT, True, "CLOSE", False),
])
def test_consistency_of_outcome_and_prediction(predicts, connected, leaked, consistent):
    assert result(predicts, connected, leaked).consistent is consistent
    assert result(predicts, connected, leaked).to_dict()["consistent"] is consistent
