"""Ephemeral-port collision after conntrack expiry (DESIGN.md §5.4; book: "App outbound
connecting timed out"), with the outcome the kernel probe predicts.

Hop: the app in L1 (``fortio-server-0``) ↔ its own sidecar, on the outbound TCP-proxy path
``app → tcp-echo:9000 (REDIRECT → 127.0.0.1:15001) → tcp-echo`` (overlay ``tcp-echo``).

1. Probe (:mod:`meshlab.probes.challenge_ack`, private netns pair): does this kernel's
   conntrack mark the RST answering a challenge ACK INVALID? → ``reset-succeeds`` (Linux 6.2+)
   or ``connect-timeout``. Recorded as observation ``challenge-ack-probe`` (kind ``probe``) and
   a journal note.
2. The leak (§5.3): an app client in L1 connects from port :data:`PORT`; ``half-close`` makes
   tcp-echo send FIN, L1's sidecar half-closes toward the app (its socket on 15001 goes
   FIN-WAIT-2, no timer). ``conntrack-delete`` (``--state CLOSE_WAIT``) then does at
   once what the CLOSE_WAIT timeout does after 60 s. The app closes late: its FIN is INVALID,
   is not un-NATed to 15001 and is lost; the sidecar keeps FIN-WAIT-2 + CLOSE-WAIT. The app's
   orphaned LAST-ACK socket is aborted with ``ss -K`` — time scaling of its FIN retransmissions
   giving up (``tcp_orphan_retries``), after which the port is free for reuse.
3. Reuse: a new app client binds the same port and connects to tcp-echo. Its SYN is
   REDIRECTed to 15001 and meets the leaked socket → challenge ACK (L1's ``TcpExt
   TCPChallengeACK`` counter) → the app's kernel answers RST. Expected per the probe:
   ``reset-succeeds`` — the RST is NATed to 15001 and resets the leaked socket, the SYN
   retransmit connects (well under 1.5 s: SYN-SENT re-arms its timer to ``TCP_TIMEOUT_MIN``
   after an unacceptable ACK, so milliseconds, not the 1 s initial RTO) and the FIN-WAIT-2 socket
   is gone; ``connect-timeout`` — the RST is INVALID, never reaches 15001, connect() times out
   after :data:`CONNECT_TIMEOUT_S` and the leaked socket stays.

:data:`PORT` is outside the default ``ip_local_port_range`` (32768-60999) so no socket the
kernel picks can collide with it; the mechanism is the same for a reused ephemeral port.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import pytest

from meshlab import ConntrackDelete, HalfClose, Run, SocketCount, wait_until
from meshlab.apps.tcp_client import wait_event
from meshlab.collectors.sockets import snapshot, to_dicts
from meshlab.probes.challenge_ack import RESET_SUCCEEDS, probe_challenge_ack

pytestmark = pytest.mark.meshlab_lab(overlays=["tcp-echo"])

L1, UPSTREAM = "fortio-server", "tcp-echo"  # workloads, and the Services in front of them
PORT = 61234
CONNECT_TIMEOUT_S = 3.0
RESET_CONNECT_MAX_S = 1.5
SIDECAR_UID = 1337
OUTBOUND_PORT = 15001


def client_argv(*args: str) -> list[str]:
    """``meshlab.apps.tcp_client`` toward tcp-echo (the local lab runs pods from the runner's
    Python; on a cluster the L1 app container runs the same module)."""
    return [sys.executable, "-m", "meshlab.apps.tcp_client", "--connect", f"{UPSTREAM}:9000",
            "--bind-port", str(PORT), *args]


def netstat_counter(shell: Any, name: str) -> int:
    """A ``TcpExt`` counter of the shell's netns from ``/proc/net/netstat``."""
    lines = shell.run(["cat", "/proc/net/netstat"]).stdout.splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], values.split()[1:], strict=True))[name])
    raise AssertionError(f"no TcpExt {name} in /proc/net/netstat")


def conntrack_invalid(shell: Any) -> int:
    """conntrack's INVALID count of the shell's netns (``conntrack -S``, summed over CPUs)."""
    out = shell.run(["conntrack", "-S"]).stdout
    return sum(int(w.split("=")[1]) for w in out.split() if w.startswith("invalid="))


def wait_close_wait_entry(shell: Any, cluster_ip: str, timeout_s: float = 5.0) -> str:
    """Poll until the app's conntrack entry (app → tcp-echo ClusterIP, REDIRECTed to 15001) is
    in CLOSE_WAIT: the sidecar's FIN has been ACKed by the app's kernel (the app may read EOF
    a moment before its ACK is seen by conntrack)."""
    argv = ["conntrack", "-L", "-p", "tcp", "--orig-dst", cluster_ip, "--orig-port-dst", "9000",
            "--state", "CLOSE_WAIT"]
    return wait_until(lambda: shell.run(argv, check=False).stdout.strip(), timeout_s=timeout_s,
                      what=f"a CLOSE_WAIT conntrack entry toward {cluster_ip}:9000",
                      every_s=0.02)


def leak_sidecar_socket(run: Run, cluster_ip: str) -> list[dict[str, Any]]:
    """Step 2: returns the L1 socket snapshot with the leaked pair (also observed)."""
    l1 = run.names.pod(L1)
    shell = run.shell(l1)
    out = run.journal.dir / "app-first.out"
    app = shell.popen(client_argv("--send", "hello", "--hold-s", "30", "--close-delay-s", "30"),
                      stdout=out)
    try:
        wait_event(out, "connected")
        with run.fault(HalfClose(target=l1, upstream=run.names.pod(UPSTREAM),
                                 close_wait_timeout_s=5),
                       max_duration_s=60):
            wait_event(out, "eof")
            wait_close_wait_entry(shell, cluster_ip)
            with run.fault(ConntrackDelete(target=l1, orig_dst=cluster_ip, orig_port=9000,
                                          state="CLOSE_WAIT")) as expiry:
                assert expiry.deleted == 1
            app.send_signal(signal.SIGTERM)  # the app closes late: its FIN is lost
            app.wait(timeout=10)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(timeout=10)
    shell.run(["ss", "-K", "-Htn", "state", "last-ack", "sport", "=", f":{PORT}"])
    return run.observe("l1-sockets-leaked", "sockets", to_dicts(snapshot(shell)),
                       pod=l1)


def test_port_reuse_meets_the_leaked_socket_as_the_probe_predicts(meshlab_run: Run) -> None:
    probe = probe_challenge_ack(prefix=f"ml-{meshlab_run.env.lab}-probe")
    meshlab_run.observe("challenge-ack-probe", "probe", probe.to_dict(), kernel=probe.kernel)
    meshlab_run.note(probe.summary())
    assert probe.consistent, probe.to_dict()

    l1 = meshlab_run.names.pod(L1)
    shell = meshlab_run.shell(l1)
    cluster_ip = shell.run(["getent", "hosts", UPSTREAM]).stdout.split()[0]
    leak_sidecar_socket(meshlab_run, cluster_ip)
    meshlab_run.check(
        SocketCount("l1-sockets-leaked", state="FIN-WAIT-2", uid=SIDECAR_UID,
                    local_port=OUTBOUND_PORT, peer_port=PORT, at_least=1, at_most=1),
        SocketCount("l1-sockets-leaked", state="CLOSE-WAIT", uid=SIDECAR_UID, peer_port=9000,
                    at_least=1),
        SocketCount("l1-sockets-leaked", local_port=PORT, at_most=0),  # the app's side: gone
    )

    acks, invalid = netstat_counter(shell, "TCPChallengeACK"), conntrack_invalid(shell)
    res = shell.run(client_argv("--send", "hi", "--hold-s", "0.3", "--connect-timeout-s",
                                str(CONNECT_TIMEOUT_S)), check=False,
                    timeout_s=CONNECT_TIMEOUT_S + 10)
    result = json.loads(res.stdout.splitlines()[-1])
    seen = {**result, "challenge_acks": netstat_counter(shell, "TCPChallengeACK") - acks,
            "conntrack_invalid": conntrack_invalid(shell) - invalid,
            "expected": probe.predicts}
    meshlab_run.observe("port-reuse", "client", seen, pod=l1, port=PORT)
    meshlab_run.observe("l1-sockets-after-reuse", "sockets",
                        to_dicts(snapshot(shell)), pod=l1)
    outcome = result["error"] or f"connected in {result['connect_s']:.3f} s"
    meshlab_run.note(
        f"lab: reusing port {PORT} → {outcome}; {seen['challenge_acks']} challenge ACK(s) "
        f"from L1's sidecar, conntrack INVALID +{seen['conntrack_invalid']}")
    assert seen["challenge_acks"] >= 1, seen  # the SYN met the leaked socket
    leaked = SocketCount("l1-sockets-after-reuse", state="FIN-WAIT-2", uid=SIDECAR_UID,
                         local_port=OUTBOUND_PORT, peer_port=PORT,
                         **({"at_most": 0} if probe.predicts == RESET_SUCCEEDS
                            else {"at_least": 1}))
    if probe.predicts == RESET_SUCCEEDS:
        assert result["error"] is None and result["connect_s"] < RESET_CONNECT_MAX_S, seen
        assert result["received_bytes"] == 2, seen  # echoed through the sidecar and tcp-echo
    else:
        assert result["connect_s"] is None and "timed out" in result["error"], seen
    meshlab_run.check(leaked)
