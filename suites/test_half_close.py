"""TCP proxy half-closed connection leak (DESIGN.md §5.3; book: "TCP Proxy half-closed
connection leak for 1 hour").

The app in L1 (``tcp_client`` in ``fortio-server-0``'s netns) holds a TCP session through L1's
sidecar (outbound TCP proxy) to ``tcp-echo``. The ``half-close`` fault scales L1's conntrack
CLOSE_WAIT timeout down to ``CLOSE_WAIT_S`` (60 s on a real node) and makes tcp-echo send FIN.
The sidecar relays it as ``shutdown(SHUT_WR)`` toward the app; the app reads EOF but closes
only ``CLOSE_DELAY_S`` later, after the conntrack entry of its REDIRECT to 15001 expired, so its
FIN is INVALID, is never un-NATed and never reaches the sidecar:

- leak (default TCP proxy ``idle_timeout``, 1 h): the sidecar (uid 1337) keeps a FIN-WAIT-2
  socket toward the app and a CLOSE-WAIT socket toward tcp-echo; the app's socket sits in
  LAST-ACK retransmitting its FIN; both sidecar sockets are still there ``PERSIST_S`` after the
  app closed, and the session has no access-log record yet (it is still open for the sidecar).
- mitigation (overlay ``tcp-idle-timeout``: DestinationRule ``connectionPool.tcp.idleTimeout``
  ``IDLE_TIMEOUT_S``): the same sequence, and the sidecar aborts the session ``IDLE_TIMEOUT_S``
  after its last byte: ``tcp.<cluster>.idle_timeout`` +1 and one access-log record with that
  duration and no response flag (Envoy sets none for an idle timeout). What is left toward the
  app is the kernel's own orphan FIN-WAIT-2 (``tcp_fin_timeout`` timer, no owner): bounded. The
  checks read a socket snapshot taken at the stated bound (idle timeout + 2 s after the FIN),
  not the state a poll waited for, and the leak is shown to have formed first.

Time scaling used (journaled as observations and in the fault window): CLOSE_WAIT 60 s → 2 s,
app close delay 4 s, idle_timeout 1 h → 6 s.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshlab import HalfClose, Run, SocketCount, wait_until
from meshlab.apps.tcp_client import read_events, wait_event
from meshlab.collectors import envoy_stats
from meshlab.collectors.sockets import SocketInfo, select, snapshot, to_dicts
from meshlab.faults.half_close import CLOSE_WAIT_SYSCTL

pytestmark = pytest.mark.meshlab_lab(overlays=["tcp-echo"])

L1, UPSTREAM = "fortio-server", "tcp-echo"  # workloads, and the Services in front of them
PORT = 9000
SIDECAR_UID = 1337
CLOSE_WAIT_S = 2      # scaled nf_conntrack_tcp_timeout_close_wait (kernel default 60 s)
CLOSE_DELAY_S = 4.0   # the app closes this long after reading EOF (> CLOSE_WAIT_S)
PERSIST_S = 4.0       # how long after the app's close the leak is confirmed again
IDLE_TIMEOUT_S = 6.0  # overlays/tcp-idle-timeout (> CLOSE_DELAY_S: the app's FIN is lost first)
WAIT_S = 10.0
CLEAR_MARGIN_S = 2.0  # the mitigation's bound: cleared within IDLE_TIMEOUT_S + this of the FIN
SEND = "hello"

T = TypeVar("T")


def l1_pod(run: Run) -> str:
    """L1's pod (the app's client and the sidecar under test)."""
    return run.names.pod(L1)


def tcp_echo_cluster(run: Run) -> str:
    """L1's outbound cluster for the tcp-echo Service, as this lab names it."""
    return run.names.outbound_cluster(UPSTREAM, PORT)


def idle_stat(run: Run) -> str:
    """The TCP proxy's idle-timeout counter of that cluster (``tcp.<cluster>.idle_timeout``)."""
    return f"tcp.{tcp_echo_cluster(run)}.idle_timeout"


def poll(fn: Callable[[], T], ok: Callable[[T], bool], timeout_s: float,
         what: str) -> tuple[T, float]:
    """:func:`~meshlab.polling.wait_until`, plus the epoch seconds the value was seen."""
    return wait_until(fn, ok, timeout_s=timeout_s, what=what, every_s=0.1), time.time()


@dataclass
class App:
    """One ``tcp_client`` process in L1's netns (``stdout``: its JSON-lines events)."""

    proc: Any
    stdout: Path
    result_path: Path

    def events(self) -> dict[str, dict[str, Any]]:
        return read_events(self.stdout)

    def wait_event(self, name: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        return wait_event(self.stdout, name, timeout_s)

    def wait_echo(self) -> None:
        """Wait until the echo of ``SEND`` came back: tcp-echo accepted the session through
        both sidecars, so its FIN will hit this session."""
        self.wait_event("received")

    def wait_result(self, timeout_s: float) -> dict[str, Any]:
        self.proc.wait(timeout=timeout_s)
        return json.loads(self.result_path.read_text())


@pytest.fixture
def start_app(meshlab_run: Run) -> Iterator[Callable[[str], App]]:
    """Start ``tcp_client`` in L1 (connects to ``tcp-echo:9000``, closes ``CLOSE_DELAY_S``
    after EOF); every process started is gone when the test ends."""
    started: list[App] = []

    def start(name: str) -> App:
        folder = meshlab_run.journal.dir
        app = App(None, folder / f"{name}-events.jsonl", folder / f"{name}-result.json")
        app.proc = meshlab_run.shell(l1_pod(meshlab_run)).popen(
            [sys.executable, "-m", "meshlab.apps.tcp_client", "--connect", f"{UPSTREAM}:{PORT}",
             "--send", SEND, "--close-delay-s", str(CLOSE_DELAY_S), "--hold-s", "30",
             "--result", str(app.result_path)],
            stdout=app.stdout, stderr=folder / f"{name}-stderr.log")
        started.append(app)
        return app

    yield start
    for app in started:
        if app.proc.poll() is None:
            app.proc.kill()
        app.proc.wait(timeout=WAIT_S)


def l1_sockets(run: Run) -> list[SocketInfo]:
    return snapshot(run.shell(l1_pod(run)))


def leaked_pair(sockets: list[SocketInfo], app_port: int, upstream_ip: str
                ) -> tuple[list[SocketInfo], list[SocketInfo]]:
    """The sidecar's FIN-WAIT-2 toward the app's port and CLOSE-WAIT toward the upstream."""
    return (select(sockets, state="FIN-WAIT-2", uid=SIDECAR_UID, peer_port=app_port),
            select(sockets, state="CLOSE-WAIT", uid=SIDECAR_UID, peer_ip=upstream_ip,
                   peer_port=PORT))


def observe_sockets(run: Run, name: str, sockets: list[SocketInfo], **meta: Any) -> None:
    run.observe(name, "sockets", to_dicts(sockets), pod=l1_pod(run), **meta)


def sidecar_stat(run: Run, name: str) -> int:
    """One counter/gauge of L1's sidecar about the tcp-echo cluster (0 when absent), e.g.
    ``tcp.<CLUSTER>.idle_timeout`` or ``cluster.<CLUSTER>;.upstream_cx_active``."""
    return envoy_stats.snapshot(run.env, l1_pod(run), "tcp-echo").get(name, 0)


def session_records(run: Run, app_port: int) -> list[dict[str, Any]]:
    """L1's access-log records of the app's session (by its source port)."""
    cluster = tcp_echo_cluster(run)
    return [r for r in run.records(l1_pod(run)) if r.get("upstream_cluster") == cluster
            and str(r.get("downstream_remote_address", "")).endswith(f":{app_port}")]


def conntrack_entries(run: Run, app_port: int) -> list[str]:
    """L1's conntrack entries of the app's connection (``conntrack -L``)."""
    res = run.shell(l1_pod(run)).run(["conntrack", "-L", "-p", "tcp", "--sport", str(app_port)],
                                    check=False)
    return [ln for ln in res.stdout.splitlines() if "dport=" in ln]


@contextmanager
def half_closed_session(run: Run, start_app: Callable[[str], App], name: str
                        ) -> Iterator[tuple[HalfClose, dict[str, Any]]]:
    """Start the app, inject the fault once the session is open end to end, wait for the
    sidecar's FIN-WAIT-2 + CLOSE-WAIT pair and for the app's late close; yields ``(fault,
    what was seen)`` with the fault still active (ports, timings, the app's result)."""
    app = start_app(name)
    app.wait_echo()
    app_port = app.events()["connected"]["local_port"]  # an int (JSON)
    upstream_ip = run.pod(run.names.pod(UPSTREAM)).ip
    seen: dict[str, Any] = {"app_port": app_port, "upstream_ip": upstream_ip}
    fault = HalfClose(target=l1_pod(run), upstream=run.names.pod(UPSTREAM),
                      close_wait_timeout_s=CLOSE_WAIT_S)
    seen["inject_epoch_s"] = time.time()  # the FIN is later than this
    with run.fault(fault, max_duration_s=60):
        pair, seen["leak_seen_epoch_s"] = poll(
            lambda: leaked_pair(l1_sockets(run), app_port, upstream_ip),
            lambda p: bool(p[0] and p[1]), WAIT_S,
            "sidecar FIN-WAIT-2 + CLOSE-WAIT after the FIN")
        observe_sockets(run, "l1-sockets-after-upstream-fin", pair[0] + pair[1])
        seen["conntrack_after_fin"] = conntrack_entries(run, app_port)
        seen["conntrack_read_after_inject_s"] = round(time.time() - seen["inject_epoch_s"], 3)
        seen["result"] = app.wait_result(CLOSE_DELAY_S + WAIT_S)
        seen["eof_epoch_s"] = app.events()["eof"]["t_epoch_s"]
        yield fault, seen


def observe_timings(run: Run, fault: HalfClose, seen: dict[str, Any], **extra: Any) -> None:
    """Journal the time scaling used and what was measured (observation ``timings``)."""
    result = seen["result"]
    run.observe("timings", "probe", {
        "sysctl": CLOSE_WAIT_SYSCTL, "sysctl_saved": fault.saved.get(CLOSE_WAIT_SYSCTL),
        "close_wait_timeout_s": CLOSE_WAIT_S, "close_delay_s": CLOSE_DELAY_S, "app": result,
        "app_closed_after_fin_s": round(result["closed_at_epoch_s"] - seen["eof_epoch_s"], 3),
        "conntrack_after_fin": seen["conntrack_after_fin"],
        "conntrack_read_after_inject_s": seen["conntrack_read_after_inject_s"], **extra},
        pod=l1_pod(run))


def test_half_closed_session_leaks_sidecar_sockets(meshlab_run: Run,
                                                   start_app: Callable[[str], App]) -> None:
    """Without mitigation the sidecar's FIN-WAIT-2 / CLOSE-WAIT pair outlives the app."""
    with half_closed_session(meshlab_run, start_app, "leak") as (fault, seen):
        app_port, result = seen["app_port"], seen["result"]
        # the app's FIN left but was never ACKed by the sidecar's kernel: LAST-ACK
        after_close = l1_sockets(meshlab_run)
        observe_sockets(meshlab_run, "l1-sockets-after-app-close", after_close)
        conntrack_after_close = conntrack_entries(meshlab_run, app_port)
        meshlab_run.sleep(PERSIST_S, "the leak must outlive the app's close")
        persist = l1_sockets(meshlab_run)
        observe_sockets(meshlab_run, "l1-sockets-persist", persist,
                        seconds_after_app_close=round(time.time() - result["closed_at_epoch_s"], 3))
        records = session_records(meshlab_run, app_port)
        cx_active = sidecar_stat(
            meshlab_run, f"cluster.{tcp_echo_cluster(meshlab_run)};.upstream_cx_active")
    observe_timings(meshlab_run, fault, seen, persist_s=PERSIST_S,
                    conntrack_after_app_close=conntrack_after_close,
                    upstream_cx_active=cx_active, access_log_records_of_session=records)
    assert result["error"] is None and result["eof_after_s"] is not None, result
    assert result["closed_at_epoch_s"] - seen["eof_epoch_s"] >= CLOSE_DELAY_S - 0.1
    if seen["conntrack_read_after_inject_s"] < CLOSE_WAIT_S - 0.3:  # read before it can expire
        assert any("CLOSE_WAIT" in ln for ln in seen["conntrack_after_fin"]), seen
    assert conntrack_after_close == [], conntrack_after_close  # expired: the FIN is INVALID
    meshlab_run.check(
        SocketCount("l1-sockets-after-app-close", state="LAST-ACK", local_port=app_port,
                    at_least=1),
        SocketCount("l1-sockets-persist", state="FIN-WAIT-2", uid=SIDECAR_UID,
                    peer_port=app_port, at_least=1, at_most=1),
        SocketCount("l1-sockets-persist", state="CLOSE-WAIT", uid=SIDECAR_UID,
                    peer_ip=seen["upstream_ip"], peer_port=PORT, at_least=1, at_most=1),
    )
    # owned by the sidecar and without any kernel timer (tcp_fin_timeout is for orphans only)
    assert [s.timer for s in select(persist, state="FIN-WAIT-2", peer_port=app_port)] == [None]
    assert records == []  # the sidecar still holds the session open: nothing logged yet
    assert cx_active == 1


@pytest.mark.meshlab_lab(overlays=["tcp-echo", "tcp-idle-timeout"])
def test_tcp_idle_timeout_bounds_the_leak(meshlab_run: Run,
                                          start_app: Callable[[str], App]) -> None:
    """With ``idleTimeout: 6s`` the same leak is cleared by the TCP proxy idle timeout."""
    idle_before = sidecar_stat(meshlab_run, idle_stat(meshlab_run))
    with half_closed_session(meshlab_run, start_app, "mitigated") as (fault, seen):
        app_port, upstream_ip = seen["app_port"], seen["upstream_ip"]
        _, cleared_epoch_s = poll(
            lambda: l1_sockets(meshlab_run),
            lambda s: leaked_pair(s, app_port, upstream_ip) == ([], []),
            IDLE_TIMEOUT_S + WAIT_S, "sidecar sockets cleared by the idle timeout")
        # the checks read a snapshot taken at the stated bound, whatever the poll saw: the
        # idle timeout after the FIN plus a margin (an observation point, not synchronisation)
        bound_epoch_s = seen["eof_epoch_s"] + IDLE_TIMEOUT_S + CLEAR_MARGIN_S
        meshlab_run.sleep(max(0.0, bound_epoch_s - time.time()), "until the stated bound")
        at_bound = l1_sockets(meshlab_run)
        observe_sockets(meshlab_run, "l1-sockets-at-bound", at_bound,
                        seconds_after_fin=round(time.time() - seen["eof_epoch_s"], 3))
    records = poll(lambda: session_records(meshlab_run, app_port), bool, WAIT_S,
                   "the session's access-log record")[0]
    idle_after = sidecar_stat(meshlab_run, idle_stat(meshlab_run))
    cleared_after_fin_s = cleared_epoch_s - seen["eof_epoch_s"]
    observe_timings(meshlab_run, fault, seen, idle_timeout_s=IDLE_TIMEOUT_S,
                    cleared_after_fin_s=round(cleared_after_fin_s, 3),
                    tcp_idle_timeout_delta=idle_after - idle_before, access_log_records=records)
    meshlab_run.check(
        # the leak formed in this run too (the FIN was relayed, the app's close was lost) …
        SocketCount("l1-sockets-after-upstream-fin", state="FIN-WAIT-2", uid=SIDECAR_UID,
                    peer_port=app_port, at_least=1),
        # … and at the bound the sidecar holds neither side any more
        SocketCount("l1-sockets-at-bound", state="FIN-WAIT-2", uid=SIDECAR_UID,
                    peer_port=app_port, at_most=0),
        SocketCount("l1-sockets-at-bound", state="CLOSE-WAIT", uid=SIDECAR_UID,
                    peer_ip=upstream_ip, peer_port=PORT, at_most=0),
    )
    # what may be left toward the app is the kernel's orphan FIN-WAIT-2 (no owner,
    # tcp_fin_timeout timer): bounded, unlike the leak
    assert all(s.uid is None and s.timer for s in select(at_bound, peer_port=app_port)), at_bound
    assert cleared_after_fin_s <= IDLE_TIMEOUT_S + CLEAR_MARGIN_S, cleared_after_fin_s
    assert idle_after - idle_before == 1
    (record,) = records
    assert record["response_flags"] == "-"  # Envoy sets no flag for tcp_session_idle_timeout
    assert record["duration"] >= (IDLE_TIMEOUT_S - 0.5) * 1000, record
    assert record["bytes_received"] == len(SEND)
