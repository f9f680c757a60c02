"""assert_all: evaluates every check, records verdicts, raises one readable error."""

from __future__ import annotations

import pytest

from meshlab.checks import (
    ErrorRateAtMost,
    LatencyPercentileAtMost,
    OnlyResponseFlags,
    TpsAtLeast,
    Verdict,
    assert_all,
)
from meshlab.errors import MeshlabError, SystemUnderTestError


def journal():
    return {"loads": [{"name": "baseline", "requests": 1000, "errors": 0, "tps": 198.2,
                       "error_rate": 0.0, "latency_us": {"p99": 12_400}}],
            "sidecars": {"fortio-server-0": {"response_flags": {"inbound|8080||": {"-": 1000}}}},
            "verdicts": [{"check": "earlier", "passed": True}]}


def test_all_passing_returns_verdicts_and_records_them():
    data = journal()

    verdicts = assert_all(data, [TpsAtLeast(100, load="baseline"),
                                 ErrorRateAtMost(0.0, load="baseline"), OnlyResponseFlags()])

    assert [v.passed for v in verdicts] == [True, True, True]
    assert all(isinstance(v, Verdict) for v in verdicts)
    assert [v["check"] for v in data["verdicts"]] == [
        "earlier", "tps_at_least", "error_rate_at_most", "only_response_flags"]


def test_failures_are_all_listed_after_every_check_ran():
    data = journal()
    del data["verdicts"]
    checks = [LatencyPercentileAtMost(99, at_most=10.0, load="baseline"),
              TpsAtLeast(100, load="baseline"),
              TpsAtLeast(100, load="poweroff")]

    with pytest.raises(SystemUnderTestError) as info:
        assert_all(data, checks)

    assert isinstance(info.value, AssertionError) and isinstance(info.value, MeshlabError)
    assert str(info.value) == (
        "2 of 3 checks failed:\n"
        "  - p99 latency of load 'baseline' is 12.4 ms, expected <= 10.0 ms\n"
        "  - tps_at_least on 'poweroff': no load named 'poweroff' (loads: baseline) in the "
        "journal, expected >= 100.0 TPS")
    assert [v["passed"] for v in data["verdicts"]] == [False, True, False]


def test_verdict_str_is_readable():
    verdict = TpsAtLeast(1, load="baseline").evaluate(journal())
    assert str(verdict) == "[PASS] throughput of load 'baseline' is 198.2 TPS, expected >= 1.0 TPS"
