"""series.py: the §5 reader — delta decoding, rates, gaps, truncated lines, zero-filled states."""

from __future__ import annotations

import json

import pytest
from _journals import FAULT, L1_OUT, T0, make_journal, series_lines, write_run

from meshlab.report.series import (
    accesslog_series,
    conntrack_series,
    envoy_series,
    load_series,
    parse_jsonl,
    sockets_series,
)

RETRANS = f"cluster.{L1_OUT};.tcp_stats.cx_tx_retransmitted_segments"
UNACKED = f"cluster.{L1_OUT};.tcp_stats.cx_tx_unacked_segments"
RTT = f"cluster.{L1_OUT};.tcp_stats.cx_rtt_us"


def _jsonl(*lines) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


def test_truncated_last_line_and_malformed_lines_are_skipped():
    text = _jsonl({"t": 1.0, "target": "a", "x": 1}) + "{oops\n" + _jsonl(
        [1, 2], {"t": "2", "target": "a"}, {"t": 3.0, "target": "a", "future_key": {}}) \
        + '{"t": 4.0, "tar'

    decoded = parse_jsonl(text)

    assert [line["t"] for line in decoded.lines] == [1.0, 3.0]
    assert decoded.truncated is True and decoded.bad_lines == 3
    assert parse_jsonl(_jsonl({"t": 1.0, "target": "a"})).truncated is False


def test_envoy_stats_are_delta_decoded_into_rates_gauges_and_quantiles():
    lines = [
        {"t": 10.0, "target": "p", "counters": {"c": 100, "quiet": 5}, "gauges": {"g": 3},
         "histograms": {"h": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": None, "max": 4.0}}},
        {"t": 12.0, "target": "p", "counters": {"c": 110}, "gauges": {}, "histograms": {}},
        {"t": 13.0, "target": "p", "counters": {"c": 2, "late": 6}, "gauges": {"g": 0}},
    ]

    target = envoy_series(lines)["p"]

    assert target.rates["c"] == [(10.0, None), (12.0, 5.0), (13.0, 2.0)]  # reset: new value
    assert target.rates["quiet"] == [(10.0, None), (12.0, 0.0), (13.0, 0.0)]  # unchanged
    assert target.rates["late"] == [(10.0, None), (12.0, None), (13.0, 6.0)]  # new stat from 0
    assert target.gauges["g"] == [(10.0, 3.0), (12.0, 3.0), (13.0, 0.0)]
    assert target.histograms["h"]["p99"] == [(10.0, 3.0), (12.0, 3.0), (13.0, 3.0)]
    assert target.histograms["h"]["p999"] == [(10.0, None), (12.0, None), (13.0, None)]
    assert target.final == {"c": 2.0, "quiet": 5.0, "late": 6.0, "g": 0.0}


def test_a_gap_breaks_every_line_and_the_next_line_restarts_the_rates():
    lines = [{"t": 1.0, "target": "p", "counters": {"c": 1}, "gauges": {"g": 1}},
             {"t": 2.0, "target": "p", "gap": "admin timeout"},
             {"t": 3.0, "target": "p", "counters": {"c": 9}, "gauges": {"g": 2}},
             {"t": 4.0, "target": "p", "counters": {"c": 10}}]

    target = envoy_series(lines)["p"]

    assert target.rates["c"] == [(1.0, None), (2.0, None), (3.0, None), (4.0, 1.0)]
    assert target.gauges["g"] == [(1.0, 1.0), (2.0, None), (3.0, 2.0), (4.0, 2.0)]
    assert target.gaps == [(2.0, "admin timeout")] and target.times == [1.0, 3.0, 4.0]


def test_select_limits_the_series_but_not_the_decoding():
    lines = [{"t": 1.0, "target": "p", "counters": {"a.tcp_stats.x": 1, "other": 1}}]
    target = envoy_series(lines, select=lambda s: "tcp_stats" in s)["p"]
    assert list(target.rates) == ["a.tcp_stats.x"] and target.final["other"] == 1.0


def test_fixture_series_decode_to_the_expected_shapes():
    lines = series_lines()
    envoy = envoy_series(lines["envoy_stats"])
    l1, l2 = envoy["fortio-server-0"], envoy["fortio-server-l2-0"]
    during = [v for t, v in l1.rates[RETRANS] if FAULT[0] + 1 <= t < FAULT[1]]
    assert during and during == pytest.approx([7.0] * len(during))
    assert max(v for _, v in l1.gauges[UNACKED]) == 12.0
    assert len(l2.gaps) == 20 and len(l2.times) == 76

    sockets = sockets_series(lines["sockets"])["fortio-server-0"]
    syn_sent = dict(sockets.states["SYN-SENT"])
    assert syn_sent[T0 + 1.05] == 0.0 and syn_sent[FAULT[0] + 0.05] == 2.0
    l2_estab = dict(sockets_series(lines["sockets"])["fortio-server-l2-0"].states["ESTAB"])
    assert l2_estab[FAULT[0] + 0.05] is None

    conntrack = conntrack_series(lines["conntrack"])
    assert conntrack["worknode6"].kind == "node" and conntrack["fortio-server-0"].kind == "pod"
    assert conntrack["worknode5"].timeouts["ESTABLISHED"] == {"min": 431990.0, "max": 432000.0}
    assert dict(conntrack["worknode6"].entries)[FAULT[0] + 0.05] is None


def test_accesslog_counts_and_unknown_seconds():
    lines = [{"t": 5.2, "target": "p", "counts": [[4, "c", "UF", 503, 2], [4, "c", "-", 200, 9],
                                                   ["x", "c", "-", 200, 1], [4, "c"]]},
             {"t": 6.2, "target": "p", "gap": "gone"},
             {"t": 7.2, "target": "p", "gap": "gone"},
             {"t": 8.2, "target": "p", "counts": [[7, "c", "-", 200, 3]]}]

    target = accesslog_series(lines)["p"]

    assert target.counts == [(4, "c", "UF", 503, 2), (4, "c", "-", 200, 9), (7, "c", "-", 200, 3)]
    assert target.unknown_seconds() == {6}  # second 7 was read after the gap


def test_load_series_reads_listed_files_only(tmp_path):
    run_dir = write_run(tmp_path, make_journal())
    collectors = make_journal()["collectors"]

    series = load_series(run_dir, collectors)

    assert set(series.sockets) == {"fortio-server-0", "fortio-server-l2-0", "netshoot"}
    assert any("truncated last line" in note for note in series.notes)
    assert series.last_t() == pytest.approx(T0 + 96.05)

    only_sockets = dict(collectors, files={"sockets": "series/sockets.jsonl",
                                           "conntrack": "series/missing.jsonl",
                                           "accesslog": "../../etc/passwd"})
    partial = load_series(run_dir, only_sockets)
    assert partial.envoy_stats is None and partial.sockets
    assert partial.conntrack == {} and partial.accesslog == {}
    assert any("no such file" in n for n in partial.notes)
    assert any("outside the run directory" in n for n in partial.notes)
    assert load_series(run_dir, None).sockets is None


def test_container_counters_become_cores_and_throttled_periods_per_second():
    from meshlab.report.series import containers_series

    def line(t, usage_us, throttled, limit_m=100):
        return {"t": t, "target": "p", "containers": {"istio-proxy": {
            "cpu_usage_us": usage_us, "nr_periods": 0, "nr_throttled": throttled,
            "throttled_us": 0, "memory_bytes": 3 << 20, "cpu_limit_m": limit_m}}}

    series = containers_series([
        line(10.0, 1_000_000, 0), line(11.0, 1_100_000, 8),
        {"t": 12.0, "target": "p", "gap": "cgroup gone"},
        line(13.0, 1_150_000, 9), line(14.0, 50_000, 1, None)])["p"]

    assert series.cpu_cores["istio-proxy"] == [(11.0, pytest.approx(0.1)), (12.0, None),
                                               (14.0, pytest.approx(0.05))]  # reset: new value
    assert series.throttled_per_s["istio-proxy"] == [(11.0, 8.0), (12.0, None), (14.0, 1.0)]
    assert series.memory_mib["istio-proxy"][0] == (10.0, 3.0)
    assert [v for _, v in series.cpu_limit_cores["istio-proxy"]] == [0.1, 0.1, None, 0.1, None]
    assert series.gaps == [(12.0, "cgroup gone")]


def test_dns_query_counts_become_queries_per_second_per_pod():
    from meshlab.report.series import dns_series

    def line(t, l1, client):
        return {"t": t, "target": "kube-dns", "queries": {"fortio-server-0": l1,
                                                          "netshoot-0": client}}

    series = dns_series([line(10.0, 0, 2), line(11.0, 14, 2),
                         {"t": 12.0, "target": "kube-dns", "gap": "no query log"},
                         line(13.0, 28, 3), line(14.0, 7, 3)])["kube-dns"]
    assert series.queries_per_s["fortio-server-0"] == [(11.0, 14.0), (12.0, None), (14.0, 7.0)]
    assert series.queries_per_s["netshoot-0"] == [(11.0, 0.0), (12.0, None), (14.0, 0.0)]
    assert series.gaps == [(12.0, "no query log")]
