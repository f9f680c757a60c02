"""``meshlab.missing``: what a suite can do with a value a dry run did not measure, and that
none exists outside a dry-run scope (pure unit tests: no lab, no cluster)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from meshlab.checks import LatencyPercentileAtMost, StatAtLeast, TpsAtLeast
from meshlab.checks.base import record_not_evaluated
from meshlab.errors import ConfigError, MeshlabError, MissingMeasurement
from meshlab.load.result import LoadResult
from meshlab.load.spec import LoadSpec
from meshlab.missing import (
    MARK,
    Missing,
    dry_run_active,
    dry_run_scope,
    is_missing,
    json_default,
    not_measured,
)
from meshlab.polling import PollTimeout, wait_until


def test_none_is_made_outside_a_dry_run_scope():
    assert not dry_run_active()
    with pytest.raises(RuntimeError, match="outside a dry run"):
        not_measured("requests of load 'x'")
    with pytest.raises(RuntimeError, match="outside a dry run"):
        LoadResult.not_measured(LoadSpec(url="http://a/", duration_s=1, name="x"))
    with dry_run_scope():
        assert dry_run_active()
    assert not dry_run_active()


def test_arithmetic_comparisons_and_parts_stay_missing():
    with dry_run_scope():
        m = not_measured("load 'x' tps")
        for value in (m + 1, 2 * m, 1 - m, m / 3, 10 // m, m % 2, m ** 2, -m, abs(m),
                      round(m, 2), math.ceil(m), math.floor(m), m < 1, m >= 2, m == 0, m != 0):
            assert value is m
        assert str(m["p99"]) == f"{MARK}load 'x' tps[p99]>"
        assert m.get("503", 0).what == "load 'x' tps[503]"
        assert m[1:3].what == "load 'x' tps[1:3]" and m[::2].what == "load 'x' tps[::2]"
        assert m.split()[0].what == "load 'x' tps[0]" and m.strip() is m
        assert f"{m}" == repr(m) == str(m) == f"{MARK}load 'x' tps>"
        assert [1] + m is m and sum([m, 1]) is m
        assert copy.deepcopy({"a": m})["a"] is m and is_missing(m) and not is_missing(0)


def test_truth_tests_go_on_and_are_counted():
    with dry_run_scope() as scope:
        m = not_measured("load 'x' requests")
        assert m > 0  # a plain assert on it passes …
        assert "503" in m
        if m == 3:
            pass
        assert scope.truth_tests == 3  # … and is counted: the test is not evaluated
        assert scope.tested == ["load 'x' requests"]


@pytest.mark.parametrize("use", [int, float, len, list, sum, dict, lambda m: m.items(),
                                 lambda m: f"{m:.1f}", lambda m: [0][m], lambda m: range(m),
                                 lambda m: next(iter(m))])
def test_what_needs_the_real_value_raises_missing_measurement(use):
    pattern = r"^load 'x' tps not measured \(dry run\)$"
    with dry_run_scope(), pytest.raises(MissingMeasurement, match=pattern):
        use(not_measured("load 'x' tps"))
    assert issubclass(MissingMeasurement, MeshlabError)


def test_journal_json_has_null_for_a_missing_value():
    with dry_run_scope():
        text = json.dumps({"tps": not_measured("tps"), "at": object}, default=json_default)
    assert json.loads(text)["tps"] is None and "class" in json.loads(text)["at"]


def test_a_not_measured_load_keeps_the_plan_and_misses_the_numbers():
    spec = LoadSpec(url="http://fortio-server:8070/echo", users=4, rate_per_s=50, duration_s=5,
                    name="baseline", mode="open-loop")
    with dry_run_scope():
        result = LoadResult.not_measured(spec)
        assert not result.measured and result.summary() == "not measured (dry run)"
        assert (result.users, result.rate_per_s, result.mode) == (4, 50, "open-loop")
        assert result.latency_us["p99"].what == "load 'baseline' latency_us[p99]"
        assert result.late.what == "load 'baseline' late"
        data = json.loads(json.dumps(result.to_dict(), default=json_default))
        assert "tps=<not measured" in repr(result)
    assert data["name"] == "baseline" and data["requests"] is None and data["series"] is None
    assert data["not_measured"] == "dry run: nothing was sent, nothing measured"


def test_a_wait_in_a_dry_run_returns_at_once():
    with dry_run_scope():
        got = wait_until(list, bool, timeout_s=30, what="records")
        assert isinstance(got, Missing) and got.what == "records (not waited for)"
        unmeasured = not_measured("access log")
        assert isinstance(wait_until(lambda: len(unmeasured) > 3, timeout_s=30), Missing)
    with pytest.raises(PollTimeout):  # outside it, an empty answer is polled until the deadline
        wait_until(list, bool, timeout_s=0.05)


def test_checks_with_unmeasured_bounds_are_built_and_journaled_not_evaluated():
    with pytest.raises(ConfigError):  # outside a dry run a bad bound still fails
        StatAtLeast("obs", "stat", "many")
    with dry_run_scope():
        bound = not_measured("load 'x' latency_us[p50]")
        checks = [TpsAtLeast(9, load="x"), LatencyPercentileAtMost(50, at_most=bound + 12,
                                                                   load="x")]
        journal: dict = {}
        verdicts = record_not_evaluated(journal, checks)
    assert [v.passed for v in verdicts] == [None, None]
    assert str(verdicts[0]) == ("[NOT EVALUATED] tps_at_least on 'x': not evaluated (dry run: "
                                "nothing was measured), expected >= 9.0 TPS")
    assert verdicts[1].subject == "x" and "at_most=<not measured" in verdicts[1].expected
    assert [v["passed"] for v in journal["verdicts"]] == [None, None]
