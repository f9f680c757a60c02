"""``TCP_INFO`` parsing and Envoy's tcp_stats on real sockets in network namespaces (root).

Unit part: a loopback connection inside a private netns (the echo app from ``_app.py``),
compared field by field with ``ss -tin``. Lab part: an iptables DROP inside the server pod's
netns makes the client sidecar retransmit; ``cluster.<n>;.tcp_stats.*`` must show it
(ENVOY.md §3; DESIGN.md §5 scenario 2).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess

import pytest
from _pairlab import A_IP, HERE, PY, pair_lab, poll
from _tcplab import ALL_STATS, ECHO_CLUSTER, ECHO_VIP, recv_until, stat

from meshlab.envs.local.netns import add_netns, delete_netns
from meshlab.envs.local.veth_pair import connect_in_netns
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.stats.tcp_info import TCP_INFO_SIZE, parse_tcp_info, read_tcp_info
from meshlab.proxy.stats.tcp_stats import COUNTERS, TcpStatsTracker

TCP_STATS = f"cluster.{ECHO_CLUSTER};.tcp_stats."


@pytest.fixture(scope="module")
def echo_ns():
    """A private netns running the echo app on 127.0.0.1:9000."""
    if shutil.which("ip") is None or not shutil.which("ss"):
        pytest.skip("needs iproute2")
    name = f"mltest-tcpinfo-{secrets.token_hex(3)}"
    try:
        add_netns(name)
    except Exception as exc:  # noqa: BLE001 - not root / no netns support
        pytest.skip(f"cannot create a netns: {exc}")
    app = subprocess.Popen(["ip", "netns", "exec", name, PY, str(HERE / "_app.py"), "8080", "9000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def try_connect() -> bool:
            try:
                connect_in_netns(name, ("127.0.0.1", 9000), timeout_s=1).close()
                return True
            except OSError:
                return False
        assert poll(try_connect, bool, timeout_s=10)
        yield name
    finally:
        app.terminate()
        app.wait(timeout=5)
        delete_netns(name)


def _ss_info(ns: str, local_port: int) -> str:
    res = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tinH", "src", f"127.0.0.1:{local_port}"],
                         capture_output=True, text=True, timeout=10, check=True)
    return res.stdout


def _ss_field(text: str, name: str) -> int:
    m = re.search(rf"\b{name}:(\d+)", text)
    assert m, f"{name} not in {text!r}"
    return int(m.group(1))


def test_parser_matches_ss_on_a_real_connection(echo_ns):
    payload = b"x" * 100_000
    with connect_in_netns(echo_ns, ("127.0.0.1", 9000)) as s:
        s.sendall(payload)
        got = b""
        s.settimeout(10)
        while len(got) < len(payload):
            got += s.recv(65536)
        raw = s.getsockopt(6, 11, TCP_INFO_SIZE)  # IPPROTO_TCP, TCP_INFO
        info = parse_tcp_info(raw)
        text = _ss_info(echo_ns, s.getsockname()[1])
    assert info.length == len(raw) >= 232  # kernel 6.x: at least up to tcpi_rcv_wnd
    assert info.state_name == "ESTABLISHED"
    assert info.bytes_received == _ss_field(text, "bytes_received") == len(payload)
    # tcpi_bytes_sent counts retransmitted bytes too (RFC 4898 HCDataOctetsOut): a loaded
    # machine can retransmit even on loopback (a spurious RTO, undone by a DSACK)
    assert info.bytes_sent == _ss_field(text, "bytes_sent")
    assert info.bytes_sent - info.bytes_retrans == len(payload)
    assert info.bytes_acked == _ss_field(text, "bytes_acked")
    assert info.segs_out == _ss_field(text, "segs_out")
    assert info.segs_in == _ss_field(text, "segs_in")
    assert info.snd_mss == _ss_field(text, "mss") > 0
    assert info.advmss == _ss_field(text, "advmss")
    assert info.snd_cwnd == _ss_field(text, "cwnd")
    assert info.data_segs_out == _ss_field(text, "data_segs_out")
    assert 0 < info.rtt < 1_000_000 and info.rto >= 200_000  # µs; Linux minimum RTO 200 ms
    assert info.unacked == 0 and info.notsent_bytes == 0


def test_parser_accepts_short_kernel_structs(echo_ns):
    with connect_in_netns(echo_ns, ("127.0.0.1", 9000)) as s:
        full = read_tcp_info(s)
        old = parse_tcp_info(s.getsockopt(6, 11, 104))  # a 3.x-era struct: up to total_retrans
    assert old.length == 104 and old.state == full.state and old.snd_mss == full.snd_mss
    assert old.bytes_received == 0 and old.pacing_rate == 0  # past the returned length


def test_tracker_charges_deltas_and_returns_gauges(echo_ns):
    store = StatsStore(StatsMatcher(include_all=True))
    tracker = TcpStatsTracker(store)
    with connect_in_netns(echo_ns, ("127.0.0.1", 9000)) as s:
        tracked = tracker.track(s, "cluster.c;.")
        assert tracked is not None and len(tracker) == 1
        s.sendall(b"y" * 5000)
        assert len(recv_until(s, b"y" * 5000)[0]) == 5000
        tracker.record(tracked)
        sent_once = store.value("cluster.c;.tcp_stats.cx_tx_bytes_sent")
        tracker.finish(tracked)
        tracker.finish(tracked)  # idempotent
    assert sent_once == 5000
    assert store.value("cluster.c;.tcp_stats.cx_tx_bytes_sent") == 5000  # deltas, not totals
    assert store.value("cluster.c;.tcp_stats.cx_rx_bytes_received") == 5000
    assert store.value("cluster.c;.tcp_stats.cx_tx_unacked_segments") == 0
    assert store.value("cluster.c;.tcp_stats.cx_tx_unsent_bytes") == 0
    store.flush()
    assert store.get("cluster.c;.tcp_stats.cx_rtt_us").count == 2
    assert len(tracker) == 0
    # names the matcher rejects are not tracked at all (no getsockopt)
    quiet = TcpStatsTracker(StatsStore(StatsMatcher()))
    assert quiet.track(object(), "cluster.c;.") is None
    assert {n for n, _ in COUNTERS} >= {"cx_tx_retransmitted_segments", "cx_lost"}


@pytest.fixture(scope="module")
def lab():
    with pair_lab({"stats_inclusion_regexps": ALL_STATS, "tcp_stats_update_period_s": 0.2}) as lab:
        yield lab


def _iptables_b(lab, op: str) -> None:
    """Insert/delete the DROP of A's traffic into B's capture port, in B's netns only."""
    subprocess.run(["ip", "netns", "exec", lab.ns_b, "iptables", "-t", "filter", op, "INPUT",
                    "-s", A_IP, "-p", "tcp", "--dport", "15006", "-j", "DROP"],
                   check=True, capture_output=True, timeout=10)


def test_retransmissions_show_in_tcp_stats(lab):
    retrans = TCP_STATS + "cx_tx_retransmitted_segments"
    with connect_in_netns(lab.ns_a, ECHO_VIP) as s:
        s.sendall(b"warm")
        assert recv_until(s, b"warm")[0] == b"warm"  # the session A→B→app is established
        before = stat(lab.ns_a, retrans) or 0
        unacked_seen = 0
        _iptables_b(lab, "-I")
        try:
            s.sendall(b"z" * 32_000 + b"END")
            seen = poll(lambda: stat(lab.ns_a, retrans) or 0, lambda v: v > before,
                        timeout_s=15, interval_s=0.1)
            unacked_seen = stat(lab.ns_a, TCP_STATS + "cx_tx_unacked_segments") or 0
        finally:
            _iptables_b(lab, "-D")
        data, _ = recv_until(s, b"END", timeout_s=60)
        assert len(data) == 32_000 + 3  # everything arrives once the DROP is gone
    assert seen > before
    assert unacked_seen > 0  # segments in flight while the peer was unreachable
    # at close the gauges are given back and the upstream socket's final reading is taken
    unacked = poll(lambda: stat(lab.ns_a, TCP_STATS + "cx_tx_unacked_segments"),
                   lambda v: v == 0, timeout_s=10)
    assert unacked == 0
    assert (stat(lab.ns_a, TCP_STATS + "cx_tx_data_segments") or 0) > 0
    # B's accepted socket saw the same loss from the other side (listener tree)
    b_segments = stat(lab.ns_b, "listener.0.0.0.0_15006.tcp_stats.cx_rx_data_segments")
    assert b_segments is not None and b_segments > 0
