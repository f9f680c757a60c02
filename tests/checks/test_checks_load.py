"""TpsAtLeast, LatencyPercentileAtMost, ErrorRateAtMost over synthetic journals."""

from __future__ import annotations

import base64

import pytest
from hdrh.histogram import HdrHistogram

from meshlab.checks import ErrorRateAtMost, LatencyPercentileAtMost, TpsAtLeast
from meshlab.errors import ConfigError


def load(name="baseline", **fields):
    result = {"name": name, "requests": 1000, "errors": 4, "tps": 198.2, "error_rate": 0.004,
              "duration_s": 5.0,
              "latency_us": {"min": 310, "mean": 812.5, "p50": 700, "p90": 1100,
                             "p99": 12_400, "p999": 41_000, "max": 52_000}}
    result.update(fields)
    return result


def journal(*loads):
    return {"schema": "meshlab.run/1", "run_id": "r", "status": "running",
            "loads": list(loads) or [load()]}


def test_tps_at_least_passes_and_fails():
    ok = TpsAtLeast(150, load="baseline").evaluate(journal())
    low = TpsAtLeast(250, load="baseline").evaluate(journal())

    assert ok.passed and ok.observed == "198.2 TPS" and ok.expected == ">= 150.0 TPS"
    assert not low.passed
    assert low.message == "throughput of load 'baseline' is 198.2 TPS, expected >= 250.0 TPS"
    assert low.to_dict() == {"check": "tps_at_least", "subject": "baseline",
                             "expected": ">= 250.0 TPS", "observed": "198.2 TPS",
                             "passed": False, "message": low.message}


def test_tps_falls_back_to_requests_over_duration():
    verdict = TpsAtLeast(150, load="b").evaluate(journal(load("b", tps=None)))
    assert verdict.passed and verdict.observed == "200.0 TPS"


def test_latency_percentile_message_matches_the_house_format():
    verdict = LatencyPercentileAtMost(percentile=99, at_most=10.0, load="baseline").evaluate(
        journal())

    assert not verdict.passed
    assert verdict.message == "p99 latency of load 'baseline' is 12.4 ms, expected <= 10.0 ms"
    assert verdict.expected == "p99 <= 10.0 ms" and verdict.observed == "12.4 ms"


@pytest.mark.parametrize(("percentile", "at_most", "observed", "passed"), [
    (50, 1, "0.7 ms", True),
    (90, 1, "1.1 ms", False),
    (99.9, 41, "41.0 ms", True),
    (100, 50, "52.0 ms", False),
])
def test_latency_percentiles_from_the_summary(percentile, at_most, observed, passed):
    verdict = LatencyPercentileAtMost(percentile, at_most=at_most, load="baseline").evaluate(
        journal())
    assert (verdict.observed, verdict.passed) == (observed, passed)


def test_other_percentiles_come_from_the_hdr_histogram():
    histogram = HdrHistogram(1, 60_000_000, 3)
    for value_us in range(1, 10_001):
        histogram.record_value(value_us)
    encoded = histogram.encode()
    hdr = encoded.decode() if isinstance(encoded, bytes) else encoded
    base64.b64decode(hdr)  # the contract stores it base64
    result = load(hdr=hdr)

    verdict = LatencyPercentileAtMost(95, at_most=9.0, load="baseline").evaluate(journal(result))

    assert not verdict.passed
    assert verdict.message.startswith("p95 latency of load 'baseline' is 9.5")
    missing = LatencyPercentileAtMost(95, at_most=9.0, load="baseline").evaluate(journal())
    assert not missing.passed and "no p95 latency for load 'baseline'" in missing.message


def test_error_rate_passes_and_fails():
    ok = ErrorRateAtMost(0.01, load="baseline").evaluate(journal())
    bad = ErrorRateAtMost(0.001, load="baseline").evaluate(journal())

    assert ok.passed and ok.observed == "0.4 %"
    assert not bad.passed
    assert bad.message == ("error rate of load 'baseline' is 0.4 % (4 of 1000 requests), "
                           "expected <= 0.1 %")


def test_error_rate_computed_from_counts_when_ratio_is_absent():
    verdict = ErrorRateAtMost(0.0, load="b").evaluate(journal(load("b", error_rate=None,
                                                                   errors=0)))
    assert verdict.passed and verdict.observed == "0.0 %"


@pytest.mark.parametrize("check", [
    TpsAtLeast(1, load="nope"),
    LatencyPercentileAtMost(99, at_most=1, load="nope"),
    ErrorRateAtMost(0.1, load="nope"),
])
def test_missing_load_is_a_failed_verdict_naming_it(check):
    verdict = check.evaluate(journal(load("baseline"), load("poweroff")))

    assert not verdict.passed and verdict.observed == "missing"
    assert "no load named 'nope' (loads: baseline, poweroff)" in verdict.message


def test_journal_without_loads_and_with_garbage_values():
    empty = TpsAtLeast(1, load="x").evaluate({"status": "running"})
    garbage = LatencyPercentileAtMost(99, at_most=1, load="baseline").evaluate(
        journal(load(latency_us={"p99": "fast"})))

    assert not empty.passed and "the journal has no loads" in empty.message
    assert not garbage.passed and "no p99 latency" in garbage.message


@pytest.mark.parametrize("build", [
    lambda: TpsAtLeast(-1, load="a"),
    lambda: LatencyPercentileAtMost(0, at_most=1, load="a"),
    lambda: LatencyPercentileAtMost(101, at_most=1, load="a"),
    lambda: LatencyPercentileAtMost(99, at_most=-1, load="a"),
    lambda: ErrorRateAtMost(1.5, load="a"),
])
def test_invalid_parameters_are_config_errors(build):
    with pytest.raises(ConfigError):
        build()


def test_reprs_show_state():
    assert repr(LatencyPercentileAtMost(99.9, at_most=5, load="b")) == (
        "LatencyPercentileAtMost(percentile=99.9, at_most=5, load='b')")
    assert repr(TpsAtLeast(50, load="b")) == "TpsAtLeast(at_least=50, load='b')"
