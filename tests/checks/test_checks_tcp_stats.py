"""StatAtLeast / StatAtMost over journal observations, and the /stats text parser they rely on."""

import pytest

from meshlab.checks import StatAtLeast, StatAtMost, assert_all
from meshlab.collectors.envoy_stats import delta, max_values
from meshlab.collectors.stats_text import parse_stats, stats_path
from meshlab.errors import ConfigError, SystemUnderTestError

RETRANS = ("cluster.outbound|8080||fortio-server-l2.mark.svc.cluster.local;"
           ".tcp_stats.cx_tx_retransmitted_segments")
STATS_TEXT = f"""\
{RETRANS}: 22
listener.0.0.0.0_15006.tcp_stats.cx_tx_unsent_bytes: 3014
listener.[::]_15006.tcp_stats.cx_tx_unacked_segments: 4
cluster.x;.tcp_stats.cx_rtt_us: P0(nan,200000) P25(nan,202500) P100(nan,210000)
cluster.x;.tcp_stats.cx_rto: No recorded values
"""


def journal(data):
    return {"observations": {"drop": {"kind": "tcp_stats_delta", "at": "…", "data": data}}}


def test_parse_keeps_counters_and_gauges_only():
    assert parse_stats(STATS_TEXT) == {
        RETRANS: 22, "listener.0.0.0.0_15006.tcp_stats.cx_tx_unsent_bytes": 3014,
        "listener.[::]_15006.tcp_stats.cx_tx_unacked_segments": 4}


def test_delta_max_and_filter_path():
    assert delta({"a": 3, "gone": 1}, {"a": 5, "new": 2}) == {"a": 2, "new": 2}
    assert max_values([{"g": 0}, {"g": 7, "h": 1}, {"g": 2}]) == {"g": 7, "h": 1}
    assert stats_path("cluster.outbound|8080") == "/stats?filter=cluster.outbound%7C8080"
    assert stats_path(None) == "/stats"


def test_bounds_pass_and_fail_with_numbers():
    j = journal({RETRANS: 22})
    ok = StatAtLeast("drop", RETRANS, 10, label="retransmitted").evaluate(j)
    assert ok.passed and ok.observed == "22.0" and ok.expected == ">= 10.0"
    assert ok.message == "retransmitted in observation 'drop' is 22.0, expected >= 10.0"
    assert not StatAtMost("drop", RETRANS, 0).evaluate(j).passed
    with pytest.raises(SystemUnderTestError, match="expected >= 23.0"):
        assert_all(j, [StatAtLeast("drop", RETRANS, 23)])
    assert [v["passed"] for v in j["verdicts"]] == [False]


@pytest.mark.parametrize(("j", "reason"), [
    ({}, "no observation named 'drop' (observations: none)"),
    (journal(None), "holds no {stat: value} data"),
    (journal({}), f"no stat {RETRANS!r} in observation 'drop'"),
    (journal({RETRANS: "many"}), "is 'many'"),
])
def test_missing_data_is_a_failed_verdict(j, reason):
    verdict = StatAtLeast("drop", RETRANS, 1).evaluate(j)
    assert not verdict.passed and verdict.observed == "missing"
    assert reason in verdict.message


def test_bad_bound_is_a_config_error():
    with pytest.raises(ConfigError, match="at_least must be a number"):
        StatAtLeast("drop", RETRANS, "ten")
    with pytest.raises(ConfigError, match="must be named"):
        StatAtMost("", RETRANS, 1)


def test_both_bounds_and_repr():
    from meshlab.checks import StatBounds

    check = StatBounds("drop", RETRANS, at_least=10, at_most=30)
    assert check.evaluate(journal({RETRANS: 22})).expected == ">= 10.0 and <= 30.0"
    assert not check.evaluate(journal({RETRANS: 31})).passed
    assert repr(StatAtLeast("drop", "x", 1)).startswith("StatAtLeast(observation='drop'")
    with pytest.raises(ConfigError, match="greater than"):
        StatBounds("drop", RETRANS, at_least=3, at_most=1)
    with pytest.raises(ConfigError, match="give at_least"):
        StatBounds("drop", RETRANS)
