"""SocketCount over socket observations parsed from real ``ss -Htanoie`` text."""

from __future__ import annotations

import pytest

from meshlab.checks import SocketCount
from meshlab.collectors.sockets import parse_ss
from meshlab.errors import ConfigError

# L1 after the half-close leak: the sidecar (uid 1337) holds FIN-WAIT-2 on 15001 toward the app
# (port 33604) and CLOSE-WAIT toward tcp-echo; the app's own socket retransmits its FIN.
SS_TEXT = """\
CLOSE-WAIT 0      0      10.244.1.2:53910 10.244.2.3:9000 uid:1337 ino:483444 sk:18ef <->
\t ts sack bbr wscale:10,10 rto:204 rtt:0.129/0.071 mss:1448 bytes_sent:5 lastsnd:964
FIN-WAIT-2 0      0       127.0.0.1:15001 10.244.1.2:33604 uid:1337 ino:483443 sk:18f0 <->
\t ts sack bbr rto:208 rtt:5.089/10.144 mss:1448 bytes_sent:5
LAST-ACK   0      1      10.244.1.2:33604 10.96.0.12:9000  timer:(on,344ms,2) ino:0 sk:18f1
LISTEN     0      4096      0.0.0.0:15001 0.0.0.0:* uid:1337 ino:1 sk:1 <->
"""


def journal(rows=None, kind="sockets"):
    data = [s.to_dict() for s in parse_ss(SS_TEXT)] if rows is None else rows
    return {"observations": {"l1": {"kind": kind, "at": "now", "data": data,
                                    "pod": "fortio-server-0"}}}


def test_counts_the_leaked_pair():
    fin = SocketCount("l1", state="FIN-WAIT-2", uid=1337, peer_port=33604, at_least=1)
    verdict = fin.evaluate(journal())
    assert verdict.passed and verdict.observed == "1 sockets"
    assert verdict.subject == "l1 [state=FIN-WAIT-2 uid=1337 peer_port=33604]"
    assert "FIN-WAIT-2 127.0.0.1:15001->10.244.1.2:33604 uid=1337" in verdict.message
    close_wait = SocketCount("l1", state="CLOSE-WAIT", uid=1337, peer_ip="10.244.2.3",
                             peer_port=9000, at_least=1, at_most=1)
    assert close_wait.evaluate(journal()).passed
    assert SocketCount("l1", uid=1337, at_least=3, at_most=3).evaluate(journal()).passed
    assert SocketCount("l1", local_port=33604, state="LAST-ACK", at_least=1).evaluate(
        journal()).passed


def test_at_most_fails_with_readable_message():
    verdict = SocketCount("l1", state="FIN-WAIT-2", at_most=0).evaluate(journal())
    assert not verdict.passed
    assert verdict.message.startswith("sockets matching state=FIN-WAIT-2 in 'l1': 1 (")
    assert verdict.message.endswith("expected <= 0 sockets")


def test_empty_snapshot_counts_zero():
    assert SocketCount("l1", state="FIN-WAIT-2", at_most=0).evaluate(journal([])).passed


@pytest.mark.parametrize(("j", "why"), [
    ({}, "no observation named 'l1' (observations: none)"),
    (journal(kind="probe"), "is of kind 'probe', not 'sockets'"),
    (journal(rows=["x"]), "holds a row that is not a socket"),
    ({"observations": {"l1": {"kind": "sockets", "data": None}}}, "has no socket list"),
])
def test_missing_or_odd_observation_fails(j, why):
    verdict = SocketCount("l1", at_least=0).evaluate(j)
    assert not verdict.passed and verdict.observed == "missing"
    assert why in verdict.message


@pytest.mark.parametrize("kwargs", [{}, {"at_least": 2, "at_most": 1}, {"at_most": -1}])
def test_bad_bounds(kwargs):
    with pytest.raises(ConfigError):
        SocketCount("l1", **kwargs)
