"""Does this kernel's conntrack mark the RST answering a challenge ACK INVALID? (DESIGN.md §5.4)

The book's "App outbound connecting timed out": a sidecar holds a leaked FIN-WAIT-2 socket on
15001, the flow's conntrack entry has expired, and the app reuses the same ephemeral port. Its
SYN (REDIRECTed to 15001) hits the leaked socket, which answers with a challenge ACK (RFC 5961
§4, ``tcp_send_challenge_ack``); the app's kernel, in SYN-SENT, answers that unacceptable ACK
with a RST whose sequence number is the ACK's ack number. Before Linux 6.2 conntrack finds that
RST outside the window of the new entry and marks it INVALID, so the nat table never maps it
back to 15001: the leaked socket is never reset and every SYN retransmit meets it again, until
connect() times out. Linux 6.2 ("netfilter: conntrack: handle tcp challenge acks during
connection reuse", net/netfilter/nf_conntrack_proto_tcp.c) accepts it: the leaked socket is
reset and the retransmitted SYN connects (SYN-SENT re-arms its retransmit timer to
``TCP_TIMEOUT_MIN`` after an unacceptable ACK, net/ipv4/tcp_input.c, so that is milliseconds).

The probe replays exactly that in a private pair of namespaces
(:mod:`meshlab.envs.local.veth_pair`), never in the lab or the host::

    client netns  eth0 ──veth── eth0  server netns
    nat OUTPUT: VIP:9000 → DNAT server:9000          listener :9000

1. The client connects from ``client_port`` to the VIP; the server ``shutdown(SHUT_WR)``s (FIN,
   acked: the server socket is FIN-WAIT-2 with no timer, like the sidecar's).
2. The client aborts (``SO_LINGER`` 0) while an ``iptables`` rule drops its RST: the server
   socket stays FIN-WAIT-2, the client side is gone silently.
3. The flow's conntrack entry is deleted (what expiry does;
   :class:`~meshlab.faults.conntrack_delete.ConntrackDelete` builds the argv).
4. With counting rules on the client's RSTs (all / ``--ctstate INVALID``) and a scapy capture
   on the client's eth0, a real kernel ``connect()`` from the same port to the VIP.

Evidence: challenge ACK seen, RST sent, RST counted INVALID (and whether it reached the wire
DNATed), connect outcome and time, the leaked socket's state afterwards.
"""

from __future__ import annotations

import os
import platform
import socket
import struct
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from meshlab.envs.local.netns import NetnsShell
from meshlab.envs.local.netns_socket import netns_socket
from meshlab.envs.local.veth_pair import VethPair, veth_pair
from meshlab.errors import ConfigError, LabError
from meshlab.faults.conntrack_delete import ConntrackDelete
from meshlab.missing import dry_run_active, is_missing, not_measured
from meshlab.polling import wait_until
from meshlab.probes.sniff import Segment, TcpSniffer

RESET_SUCCEEDS = "reset-succeeds"
CONNECT_TIMEOUT = "connect-timeout"
VIP = "10.96.254.1"
SERVER_PORT = 9000
CLIENT_IP = "192.168.254.1"
SERVER_IP = "192.168.254.2"
# include/net/tcp_states.h
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}
_SETUP_TIMEOUT_S = 3.0


@dataclass
class ChallengeAckResult:
    """What the probe saw, and the outcome it predicts for the lab.

    Attributes:
        kernel: ``uname -r``.
        challenge_ack_seen: the leaked socket answered the SYN with a pure ACK.
        rst_sent: the client's kernel sent a RST (iptables counter, before NAT).
        rst_invalid: conntrack marked that RST INVALID (``--ctstate INVALID`` counter).
        connected: the reusing ``connect()`` succeeded.
        connect_s: how long ``connect()`` took (or until it failed), seconds.
        error: the connect error (e.g. ``timed out``), None on success.
        leaked_state_after: the leaked server socket's TCP state afterwards (``CLOSE``: reset).
        syn_count: SYNs the client sent during the attempt.
        predicts: :data:`RESET_SUCCEEDS` (Linux 6.2+ behaviour) or :data:`CONNECT_TIMEOUT`.
        evidence: ``{"counters": {...}, "segments": [lines], "rst_on_wire_to": ip:port|None}``.
    """

    kernel: str
    challenge_ack_seen: bool
    rst_sent: bool
    rst_invalid: bool
    connected: bool
    connect_s: float
    error: str | None
    leaked_state_after: str
    syn_count: int
    predicts: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        """The probe's own connect outcome matches its prediction."""
        if self.predicts == RESET_SUCCEEDS:
            return self.connected and self.leaked_state_after == "CLOSE"
        return not self.connected and self.leaked_state_after == "FIN_WAIT2"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``consistent``."""
        return {**asdict(self), "consistent": self.consistent}

    def summary(self) -> str:
        """One line for a run's notes: the kernel, what conntrack does with the RST and the
        outcome it predicts (a dry run's: that the probe did not run)."""
        if is_missing(self.predicts):
            return "challenge-ack probe: not run (dry run: nothing measured)"
        return (f"kernel {self.kernel}: conntrack {'marks' if self.rst_invalid else 'accepts'} "
                f"the RST answering a challenge ACK ({'INVALID' if self.rst_invalid else 'valid'})"
                f" → expected outcome {self.predicts} (probe connect {self.connect_s:.3f} s)")

    @classmethod
    def not_measured(cls) -> ChallengeAckResult:
        """A dry run's result: every field a :class:`~meshlab.missing.Missing`
        (``challenge-ack probe <field>``), no evidence."""
        return cls(**{f.name: not_measured(f"challenge-ack probe {f.name}")
                      for f in fields(cls) if f.name != "evidence"})


def _tcp_state(sock: socket.socket) -> str:
    """The socket's TCP state from ``TCP_INFO`` (``tcpi_state``, the first byte)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return TCP_STATES.get(raw[0], str(raw[0]))


def _poll(cond: Any, what: str, timeout_s: float = _SETUP_TIMEOUT_S) -> None:
    wait_until(cond, timeout_s=timeout_s, what=f"challenge-ack probe: {what}", every_s=0.005)


def _client_socket(netns: str, port: int, timeout_s: float) -> socket.socket:
    sock = netns_socket(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(timeout_s)
    return sock


def _rst_rule(port: int, tag: str, *extra: str) -> list[str]:
    return ["OUTPUT", "-p", "tcp", "--sport", str(port), "--tcp-flags", "RST", "RST", *extra,
            "-m", "comment", "--comment", f"probe:{tag}"]


def _counters(shell: NetnsShell) -> dict[str, int]:
    """``{comment tag: packets}`` of the probe's OUTPUT rules."""
    out: dict[str, int] = {}
    for line in shell.run(["iptables", "-nvxL", "OUTPUT"]).stdout.splitlines():
        if "/* probe:" in line:
            out[line.split("/* probe:")[1].split()[0]] = int(line.split()[0])
    return out


def _leak_server_socket(pair: VethPair, client: NetnsShell, port: int
                        ) -> tuple[socket.socket, socket.socket]:
    """Steps 1-3: returns ``(listener, leaked FIN-WAIT-2 server socket)``."""
    listener = netns_socket(pair.ns_b)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", SERVER_PORT))
    listener.listen(4)
    listener.settimeout(_SETUP_TIMEOUT_S)
    first = _client_socket(pair.ns_a, port, _SETUP_TIMEOUT_S)
    try:
        first.connect((VIP, SERVER_PORT))
        leaked, _ = listener.accept()
        leaked.shutdown(socket.SHUT_WR)  # upstream FIN; the client kernel ACKs it
        if first.recv(1) != b"":
            raise LabError("challenge-ack probe: expected EOF on the first connection")
        _poll(lambda: _tcp_state(leaked) == "FIN_WAIT2", "server socket not FIN-WAIT-2")
        drop = _rst_rule(port, "drop-abort-rst", "-j", "DROP")
        client.run(["iptables", "-I", *drop])
        try:
            first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            first.close()  # RST, dropped: the client side vanishes silently
        finally:
            client.run(["iptables", "-D", *drop])
    finally:
        first.close()
    expiry = ConntrackDelete(target=pair.ns_a, orig_dst=VIP, orig_port=SERVER_PORT)
    client.run(expiry.delete_argv())
    if _tcp_state(leaked) != "FIN_WAIT2":
        raise LabError(f"challenge-ack probe: server socket is {_tcp_state(leaked)}, "
                       "not FIN-WAIT-2, before the reuse")
    return listener, leaked


def _judge(segments: list[Segment], client: str) -> dict[str, Any]:
    """Classify the captured segments of the reuse attempt."""
    syns = [s for s in segments if s.src == client and s.flags == "S"]
    first_syn_t = syns[0].t_s if syns else float("inf")
    synack_t = min((s.t_s for s in segments if s.dst == client and s.flags == "SA"),
                   default=float("inf"))
    acks = [s for s in segments if s.dst == client and s.flags == "A"
            and first_syn_t < s.t_s < synack_t]
    rsts = [s for s in segments if s.src == client and "R" in s.flags]
    t0 = segments[0].t_s if segments else 0.0
    return {"syn_count": len(syns), "challenge_ack_seen": bool(acks),
            "rst_on_wire_to": rsts[0].dst if rsts else None,
            "segments": [s.describe(t0) for s in segments]}


def probe_challenge_ack(prefix: str = "ml-probe", client_port: int = 43210,
                        connect_timeout_s: float = 3.0) -> ChallengeAckResult:
    """Run the probe (needs root; under a second on a fixed kernel, ``connect_timeout_s``
    more on an affected one). Its namespaces are always removed.

    Args:
        prefix: netns name prefix (``<prefix>-<pid>-a``/``-b``); a lab's prefix
            (``ml-<lab>-probe``) makes ``meshlab down`` remove them after a ``kill -9``.
        client_port: the port the client reuses (any: the namespaces are private).
        connect_timeout_s: timeout of the reusing ``connect()``, seconds.

    Returns:
        The :class:`ChallengeAckResult`; in a dry run (:func:`meshlab.missing.dry_run_scope`)
        :meth:`ChallengeAckResult.not_measured`, and nothing is built.

    Raises:
        ConfigError: a bad argument.
        LabError: the setup failed, or no challenge ACK came (the experiment did not happen).
    """
    if not prefix or "/" in prefix or len(prefix) > 40:
        raise ConfigError(f"challenge-ack probe: prefix: {prefix!r} is not a netns prefix")
    if not 1024 <= client_port <= 65535:
        raise ConfigError(f"challenge-ack probe: client_port: {client_port} not in 1024-65535")
    if not 0.5 <= connect_timeout_s <= 30:
        raise ConfigError(f"challenge-ack probe: connect_timeout_s: {connect_timeout_s} "
                          "not in 0.5-30")
    if dry_run_active():  # a dry run builds nothing, on the cluster or on this machine
        return ChallengeAckResult.not_measured()
    pair = VethPair(f"{prefix}-{os.getpid()}-a", f"{prefix}-{os.getpid()}-b", CLIENT_IP,
                    SERVER_IP)
    with veth_pair(pair, capture=False):
        client = NetnsShell(pair.ns_a)
        client.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-d", VIP, "-p", "tcp", "--dport",
                    str(SERVER_PORT), "-j", "DNAT", "--to-destination",
                    f"{SERVER_IP}:{SERVER_PORT}"])
        listener, leaked = _leak_server_socket(pair, client, client_port)
        reuse: socket.socket | None = None
        try:
            client.run(["iptables", "-A", *_rst_rule(client_port, "rst-invalid", "-m",
                                                     "conntrack", "--ctstate", "INVALID")])
            client.run(["iptables", "-A", *_rst_rule(client_port, "rst-all")])
            error: str | None = None
            with TcpSniffer(pair.ns_a, client_port) as sniffer:
                reuse = _client_socket(pair.ns_a, client_port, connect_timeout_s)
                start = time.monotonic()
                try:
                    reuse.connect((VIP, SERVER_PORT))
                except OSError as exc:
                    error = str(exc) or type(exc).__name__
                connect_s = time.monotonic() - start
            leaked_state = _tcp_state(leaked)
            counters = _counters(client)
        finally:
            for sock in (reuse, leaked, listener):
                if sock is not None:
                    sock.close()
    judged = _judge(sniffer.segments, f"{CLIENT_IP}:{client_port}")
    if not judged["challenge_ack_seen"] and counters.get("rst-all", 0) == 0:
        raise LabError("challenge-ack probe: the SYN got no challenge ACK (the leaked socket "
                       f"did not answer); segments: {judged['segments']}")
    rst_invalid = counters.get("rst-invalid", 0) > 0
    return ChallengeAckResult(
        kernel=platform.release(), challenge_ack_seen=judged["challenge_ack_seen"],
        rst_sent=counters.get("rst-all", 0) > 0, rst_invalid=rst_invalid,
        connected=error is None, connect_s=round(connect_s, 6), error=error,
        leaked_state_after=leaked_state, syn_count=judged["syn_count"],
        predicts=CONNECT_TIMEOUT if rst_invalid else RESET_SUCCEEDS,
        evidence={"counters": counters, "rst_on_wire_to": judged["rst_on_wire_to"],
                  "segments": judged["segments"], "connect_timeout_s": connect_timeout_s})
