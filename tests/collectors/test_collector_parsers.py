"""Collector parsers and per-target readers on text captured from the ``cola`` lab (``data/``).

The captures: ``conntrack -L`` in L1's pod netns and in worknode5's netns after HTTP, UDP, ICMP
and an unanswered SYN; L1's ``ss -Htanoie`` during requests; L1's ``/stats`` (a subset of the
lines) right after a flush with requests and again after an idle flush (``nan`` intervals), and
its ``/stats?type=Gauges``; four access-log lines of two requests; L1's sockets and conntrack
entries of the collectors' own admin connections (``*_admin.txt``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from meshlab.collectors.accesslog import AccessLogTarget, count_records, end_second, parse_lines
from meshlab.collectors.conntrack import (
    ConntrackCommand,
    ConntrackTarget,
    parse_conntrack,
    parse_line,
)
from meshlab.collectors.conntrack import aggregate as conntrack_aggregate
from meshlab.collectors.envoy_stats import EnvoyStatsTarget
from meshlab.collectors.sockets import SocketsTarget, SsReader, parse_ss
from meshlab.collectors.sockets import aggregate as sockets_aggregate
from meshlab.collectors.stats_text import parse_histogram, parse_stats_text
from meshlab.errors import LabError

DATA = Path(__file__).with_name("data")
L1_IN = "cluster.inbound|8070||;.upstream_rq_total"
RQ_TIME = "cluster.inbound|8070||;.upstream_rq_time"
L2_OUT = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"


def data(name: str) -> str:
    return (DATA / name).read_text()


def test_conntrack_pod_capture_states_timeouts_and_fields():
    entries = parse_conntrack(data("conntrack_l1_pod.txt"))
    assert len(entries) == 13
    agg = conntrack_aggregate(entries)
    assert agg["entries"] == 13
    assert agg["states"] == {"CLOSE_WAIT": 1, "ESTABLISHED": 3, "SYN_SENT": 1, "TIME_WAIT": 5,
                             "icmp": 1, "udp": 2}
    assert agg["timeout_s"]["TIME_WAIT"] == {"min": 113, "max": 115}
    assert agg["timeout_s"]["ESTABLISHED"] == {"min": 431993, "max": 431993}
    [syn] = [e for e in entries if e.state == "SYN_SENT"]
    assert (syn.protocol, syn.dst, syn.dport, syn.flags) == ("tcp", "10.244.2.99", 8081,
                                                             ("UNREPLIED",))
    [icmp] = [e for e in entries if e.protocol == "icmp"]
    assert icmp.state is None and icmp.sport is None and icmp.state_key == "icmp"
    assert all(e.state is None and e.flags == ("UNREPLIED",)
               for e in entries if e.protocol == "udp")


def test_conntrack_node_capture_and_other_line_shapes():
    agg = conntrack_aggregate(parse_conntrack(data("conntrack_worknode5.txt")))
    assert agg["entries"] == 10 and agg["states"]["unknown"] == 1  # IGMP
    assert agg["states"]["TIME_WAIT"] == 4 and agg["timeout_s"]["unknown"]["max"] == 592
    # /proc/net/nf_conntrack (and conntrack -o extended) put the l3 protocol first
    proc = ("ipv4     2 tcp      6 116 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=40730 "
            "dport=15000 src=127.0.0.1 dst=127.0.0.1 sport=15000 dport=40730 [ASSURED] mark=0 "
            "zone=0 use=2")
    entry = parse_line(proc)
    assert entry is not None and (entry.state, entry.timeout_s, entry.dport) == ("TIME_WAIT",
                                                                                 116, 15000)
    assert parse_line("conntrack v1.4.7 (conntrack-tools): 13 flow entries have been shown.") \
        is None
    assert conntrack_aggregate([]) == {"entries": 0, "states": {}, "timeout_s": {}}


def test_sockets_aggregate_of_l1_capture():
    agg = sockets_aggregate(parse_ss(data("ss_l1.txt")))
    assert agg["states"] == {"ESTAB": 5, "LISTEN": 4, "TIME-WAIT": 3}
    assert agg["send_q_bytes"] == 126 + 175  # listeners' backlog left out
    assert agg["unacked"] == 2 and agg["retrans_total"] == 0
    assert agg["rtt_ms_max"] == 12.781
    assert agg["rtt_ms_avg"] == round((12.286 + 1.381 + 12.781 + 3.137 + 2.07) / 5, 3)
    assert agg["timers"] == {"on": 2, "keepalive": 1, "timewait": 3, "persist": 0}
    empty = sockets_aggregate([])
    assert empty["rtt_ms_max"] is None and empty["rtt_ms_avg"] is None and empty["states"] == {}


def test_stats_text_histograms_as_interval_quantiles():
    scalars, hists = parse_stats_text(data("stats_l1.txt"))
    assert scalars[L1_IN] == 20 and scalars["server.live"] == 1
    assert hists[RQ_TIME] == {"p50": 3.6, "p90": 6.3, "p99": 10.8, "p999": 10.98, "max": 11}
    assert hists["cluster.inbound|8070||;.tcp_stats.cx_delivery_rate"]["p50"] == 995000000
    assert hists["cluster.inbound|8079||;.upstream_rq_time"] == dict.fromkeys(
        ("p50", "p90", "p99", "p999", "max"))
    _, idle = parse_stats_text(data("stats_l1_nan.txt"))
    assert idle[RQ_TIME] == dict.fromkeys(("p50", "p90", "p99", "p999", "max"))  # nan interval
    assert parse_histogram("42") is None


class FakeAdminEnv:
    """Serves captured admin pages; ``pages[path]`` may be swapped or raise."""

    def __init__(self) -> None:
        self.pages: dict[str, str | Exception] = {"/stats": data("stats_l1.txt"),
                                                  "/stats?type=Gauges": data("stats_l1_gauges.txt")}
        self.calls: list[str] = []

    def pod_shell(self, pod: str) -> SimpleNamespace:
        return SimpleNamespace(name=pod)  # no netns: the client uses sidecar_admin

    def sidecar_admin(self, pod: str, path: str) -> str:
        self.calls.append(path)
        page = self.pages[path]
        if isinstance(page, Exception):
            raise page
        return page


def test_envoy_stats_target_delta_lines_and_gauge_learning():
    env = FakeAdminEnv()
    target = EnvoyStatsTarget(env, "fortio-server-0")
    first = target.read()
    assert env.calls == ["/stats", "/stats?type=Gauges"]
    assert first["counters"][L1_IN] == 20 and "server.live" not in first["counters"]
    assert first["gauges"] == {"cluster.inbound|8070||;.tcp_stats.cx_tx_unsent_bytes": 0,
                               "cluster.inbound|8070||;.upstream_cx_active": 1,
                               "http.inbound_0.0.0.0_8070;.downstream_cx_active": 0,
                               "http.inbound_0.0.0.0_8070;.downstream_rq_active": 0,
                               "server.concurrency": 1, "server.live": 1, "server.state": 0}
    assert len(first["histograms"]) == 5
    assert target.read() == {"counters": {}, "gauges": {}, "histograms": {}}
    env.pages["/stats"] = data("stats_l1_nan.txt").replace(f"{L1_IN}: 20", f"{L1_IN}: 25")
    third = target.read()
    assert third["counters"] == {L1_IN: 25} and third["gauges"] == {}
    assert set(third["histograms"]) == {RQ_TIME, "http.inbound_0.0.0.0_8070;.downstream_rq_time"}
    assert env.calls.count("/stats?type=Gauges") == 1  # steady state: one call per read
    env.pages["/stats"] += "cluster.inbound|8070||;.upstream_rq_503: 1\n"
    assert target.read()["counters"] == {"cluster.inbound|8070||;.upstream_rq_503": 1}
    assert env.calls.count("/stats?type=Gauges") == 2  # a new name: gauges learnt again
    env.pages["/stats"] = LabError("sidecar admin /stats on fortio-server-0 failed")
    with pytest.raises(LabError):
        target.read()
    env.pages["/stats"] = data("stats_l1.txt")
    assert len(target.read()["counters"]) == len(first["counters"])  # full again after a gap


def test_access_log_counts_by_end_second():
    records = parse_lines(data("accesslog_l1.jsonl").splitlines())
    second = int(datetime(2026, 11, 21, 17, 5, 41, tzinfo=UTC).timestamp())
    assert [end_second(r) for r in records] == [second] * 4
    assert count_records(records) == [[second, "inbound|8070||", "-", 200, 2],
                                      [second, L2_OUT, "-", 200, 2]]
    late = {"start_time": "2026-11-21T17:05:41.900Z", "duration": 2000,
            "upstream_cluster": None, "response_flags": "UF,URX", "response_code": 0}
    assert count_records([late, {"duration": 5}]) == [[second + 2, "-", "UF,URX", 0, 1]]


def test_access_log_target_tails_the_file(tmp_path: Path):
    log = tmp_path / "access.log"
    lines = data("accesslog_l1.jsonl").splitlines(keepends=True)
    log.write_text(lines[0])
    env = SimpleNamespace(pod_log_dir=lambda pod: tmp_path)
    target = AccessLogTarget(env, "fortio-server-0")
    assert target.read() is None  # starts at the end
    with open(log, "a") as f:
        f.write(lines[1] + lines[2][:50])  # the last line is still being written
    assert sum(c[-1] for c in target.read()["counts"]) == 1
    with open(log, "a") as f:
        f.write(lines[2][50:] + lines[3])
    assert sum(c[-1] for c in target.read()["counts"]) == 2
    log.write_text(lines[0])  # a new, shorter log: read from its start
    assert sum(c[-1] for c in target.read()["counts"]) == 1


def test_access_log_target_through_env_lines():
    lines = data("accesslog_l1.jsonl").splitlines()
    shown = lines[:1]
    env = SimpleNamespace(access_log_lines=lambda pod: list(shown))
    target = AccessLogTarget(env, "fortio-server-0")
    shown[:] = lines[:3] + [lines[3][:40]]
    assert json.dumps(target.read()).count(", 1]") == 2
    shown[:] = lines
    assert target.read()["counts"][0][-1] == 1 and target.read() is None


class CapturedShell:
    """A Shell whose every command prints one captured file."""

    def __init__(self, *names: str) -> None:
        self.text = "".join(data(n) for n in names)

    def run(self, argv: list[str], *, timeout_s: float = 60.0) -> SimpleNamespace:
        return SimpleNamespace(stdout=self.text, returncode=0)


def test_targets_leave_out_the_collectors_own_admin_connections():
    """The kept-alive admin connection (ESTAB pair, conntrack ESTABLISHED) and a closed one
    (TIME-WAIT) to 127.0.0.1:15000 are not counted; the admin listener is."""
    socks = SocketsTarget(SsReader(CapturedShell("ss_l1_admin.txt")), "fortio-server-0").read()
    assert socks["states"] == {"LISTEN": 1} and socks["rtt_ms_max"] is None
    assert sockets_aggregate(parse_ss(data("ss_l1_admin.txt")))["states"] == {
        "ESTAB": 2, "LISTEN": 1, "TIME-WAIT": 1}
    pod = ConntrackTarget(ConntrackCommand(CapturedShell("conntrack_l1_admin.txt",
                                                   "conntrack_l1_pod.txt")),
                          "fortio-server-0", "pod").read()
    assert pod == {"kind": "pod",
                   **conntrack_aggregate(parse_conntrack(data("conntrack_l1_pod.txt")))}
