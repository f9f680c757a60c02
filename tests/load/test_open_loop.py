"""Open-loop pieces without a network: the schedule (constant and Poisson), the wake timer, the
spec and argv, the recorder's open-loop keys, the result/journal/report path, and the pytest
option that switches a suite's loads to open loop."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from pathlib import Path

import pytest

from meshlab.errors import ConfigError
from meshlab.load import hdr
from meshlab.load.driver import LoadResult, runner_argv
from meshlab.load.locust_runner import parse_args
from meshlab.load.recorder import Recorder
from meshlab.load.schedule import WakeTimer, monotonic_ns, offsets_s
from meshlab.load.spec import DEFAULT_CONNECTIONS, LoadSpec
from meshlab.report.journal import validate_journal
from meshlab.report.view import load_rows

URL = "http://127.0.0.1:8080/echo"


def test_constant_schedule_is_exact_and_ends_before_the_duration() -> None:
    offsets = list(offsets_s("constant", 1000.0, 2.5))
    assert len(offsets) == 2500
    assert offsets[:3] == [0.0, 0.001, 0.002] and offsets[-1] == pytest.approx(2.499)
    assert all(b > a for a, b in itertools.pairwise(offsets))
    # computed from the index, not summed: no drift after a million requests
    assert list(offsets_s("constant", 3000.0, 400.0))[-1] == 1_199_999 / 3000.0


def test_poisson_schedule_has_the_mean_rate_and_is_seeded() -> None:
    rate, duration = 2000.0, 20.0
    offsets = list(offsets_s("poisson", rate, duration, seed=11))
    expected = rate * duration
    assert abs(len(offsets) - expected) < 4 * expected ** 0.5  # Poisson count within 4 sigma
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)
    assert offsets[0] == 0.0 and max(offsets) < duration
    assert list(offsets_s("poisson", rate, 1.0, seed=11)) == [o for o in offsets if o < 1.0]
    assert list(offsets_s("poisson", rate, 1.0, seed=12)) != list(
        offsets_s("poisson", rate, 1.0, seed=11))


def test_schedule_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="distribution"):
        next(offsets_s("uniform", 10.0, 1.0))
    with pytest.raises(ConfigError, match="rate_per_s"):
        next(offsets_s("constant", 0.0, 1.0))


def test_wake_timer_never_fires_before_the_armed_time() -> None:
    async def wakes() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        armed: list[int] = []  # when each due was armed: after the previous wake
        done = loop.create_future()
        due = [monotonic_ns() + 1_000_000 + i * 700_000 for i in range(40)]

        def on_fire() -> None:
            fired.append(monotonic_ns())
            if len(fired) == len(due):
                done.set_result(None)
            else:
                armed.append(monotonic_ns())
                timer.arm_ns(due[len(fired)])

        timer = WakeTimer(loop, on_fire)
        armed.append(monotonic_ns())
        timer.arm_ns(due[0])
        try:
            await asyncio.wait_for(done, 10)
        finally:
            timer.close()
        return ([f - d for f, d in zip(fired, due, strict=True)],
                [f - max(d, a) for f, d, a in zip(fired, due, armed, strict=True)])

    lateness_ns, wake_delay_ns = asyncio.run(wakes())
    assert min(lateness_ns) >= 0
    # and not rounded to whole milliseconds as asyncio's call_at / epoll_wait timeouts are
    # (dues 0.7 ms apart would then wake ~0.5 ms late on the median; timerfd: ~30 µs). Measured
    # from the due or, when a stall (CPU shared with other tests) made the arming come after
    # it, from the arming: a stall then delays one wake, not all the ones after it.
    assert statistics.median(wake_delay_ns) < 250_000, wake_delay_ns


@pytest.mark.parametrize(("field", "value"), [
    ("mode", "open"), ("distribution", "uniform"), ("connections", 0), ("connections", True),
    ("connections", 10_001), ("seed", 1.5)])
def test_spec_rejects_bad_open_loop_fields(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"LoadSpec.{field}"):
        LoadSpec(url=URL, duration_s=1, rate_per_s=10, **{"mode": "open-loop", field: value})


def test_open_loop_spec_needs_a_rate() -> None:
    with pytest.raises(ConfigError, match="LoadSpec.rate_per_s: open-loop"):
        LoadSpec(url=URL, duration_s=1, mode="open-loop")


def test_runner_argv_round_trips_for_both_modes(tmp_path: Path) -> None:
    spec = LoadSpec(url=URL, users=3, duration_s=5, rate_per_s=250.0, mode="open-loop",
                    distribution="poisson", connections=16, seed=9, max_requests=100)
    argv = runner_argv(spec, tmp_path / "r.json", python="/usr/bin/python3")
    assert parse_args(argv[3:]) == (spec, tmp_path / "r.json")
    closed = LoadSpec(url=URL, users=3, duration_s=5)
    closed_argv = runner_argv(closed, tmp_path / "r.json")
    assert "--mode" not in closed_argv and parse_args(closed_argv[3:])[0] == closed


def test_connections_default_to_users(tmp_path: Path) -> None:
    """``LoadSpec.connections`` None means ``users``; the runner CLI does the same, and keeps
    its 64 when neither ``--connections`` nor ``--users`` is given."""
    spec = LoadSpec(url=URL, users=3, duration_s=5, rate_per_s=10, mode="open-loop")
    assert spec.connections == 3
    assert LoadSpec(url=URL, users=3, duration_s=5, connections=7).connections == 7
    base = ["--url", URL, "--duration-s", "5", "--timeout-s", "1", "--rate-per-s", "10",
            "--mode", "open-loop", "--out", str(tmp_path / "r.json")]
    assert parse_args([*base, "--users", "5"])[0].connections == 5
    assert parse_args(base)[0].connections == DEFAULT_CONNECTIONS


def test_recorder_open_loop_keys_late_and_skipped_per_second() -> None:
    rec = Recorder(duration_s=3.0, start_s=10.0, open_loop=True)
    rec.record(200, 5000.0, 10.2, uncorrected_us=300.0, late=True)
    rec.record(200, 400.0, 10.5, uncorrected_us=350.0)
    rec.record(0, 2_000_000.0, 12.1, uncorrected_us=1_000_000.0, late=True)
    rec.skip(11.7, count=3)
    rec.skip(12.9)
    rec.finish(13.0)
    summary = rec.summary()
    assert (summary["late"], summary["skipped"]) == (2, 4)
    series = summary["series"]
    assert [(p["late"], p["skipped"], p["requests"]) for p in series] == [
        (1, 0, 2), (0, 3, 0), (1, 1, 1)]
    assert series[0]["max_us"] == pytest.approx(5000, rel=1e-3)
    assert series[0]["max_uncorrected_us"] == 350
    assert series[1]["p50_uncorrected_us"] is None and series[1]["hdr_uncorrected"] is None
    assert summary["latency_uncorrected_us"]["max"] == pytest.approx(1_000_000, rel=1e-3)
    assert hdr.decode(summary["hdr_uncorrected"]).get_total_count() == 3
    closed = Recorder(duration_s=1.0, start_s=0.0)
    closed.record(200, 100.0, 0.1)
    closed.finish(1.0)
    assert "late" not in closed.summary() and "late" not in closed.summary()["series"][0]


def _open_loop_result() -> dict:
    rec = Recorder(duration_s=2.0, start_s=0.0, open_loop=True)
    rec.record(200, 1500.0, 0.3, uncorrected_us=200.0, late=True)
    rec.record(503, 900.0, 1.4, uncorrected_us=800.0)
    rec.skip(1.9)
    rec.finish(2.0)
    head = {"tool": "meshlab", "mode": "open-loop", "target_url": URL, "users": 1,
            "rate_per_s": 2.0, "duration_s": 2.0, "distribution": "constant", "connections": 4,
            "processes": 1, "late_threshold_us": 1000}
    return rec.result(head, time.time(), 2.0)


def test_result_survives_the_driver_and_the_journal_validator() -> None:
    data = _open_loop_result()
    result = LoadResult.from_dict(json.loads(json.dumps(data)), name="ol")
    assert (result.late, result.skipped, result.connections) == (1, 1, 4)
    assert result.series[0].p50_uncorrected_us == 200 and result.series[1].skipped == 1
    journaled = result.to_dict()
    assert {k: v for k, v in journaled.items() if k != "name"} == data
    validate_journal({"schema": "meshlab.run/1", "run_id": "r", "status": "passed",
                      "loads": [journaled]})
    closed = LoadResult.from_dict({**{k: v for k, v in data.items()
                                      if k not in ("late", "skipped", "hdr_uncorrected")},
                                   "tool": "locust", "mode": "closed-loop",
                                   "series": []}, name="cl")
    assert closed.late is None and "late" not in closed.to_dict()


def test_report_labels_the_mode_and_shows_uncorrected_beside_corrected() -> None:
    data = _open_loop_result()
    row, = load_rows([{"name": "ol", **data}])
    assert (row["tool"], row["mode"]) == ("meshlab", "open-loop")
    assert row["latency_ms"][-1] == "1.500" and row["latency_uncorrected_ms"][-1] == "0.800"
    assert row["late_skipped"] == "late 1, skipped 1"
    closed, = load_rows([{"name": "cl", "tool": "locust", "mode": "closed-loop",
                          "latency_us": {"p99": 100}}])
    assert closed["latency_uncorrected_ms"] is None and closed["late_skipped"] is None


PLUGIN_TEST = '''
def test_modes(meshlab_run, pytestconfig):
    want = pytestconfig.getoption("--meshlab-load-mode")
    spec = meshlab_run._spec("a", "http://x/", 3, 100.0, 1.0, None, 1.0)
    assert spec.mode == {"locust": "closed-loop", "open-loop": "open-loop"}[want]
    assert spec.connections == 3  # the suite's users: the same connection count
    assert meshlab_run._spec("b", "http://x/", 3, None, 1.0, None, 1.0).mode == "closed-loop"
    assert meshlab_run._spec("c", "http://x/", 3, 5.0, 1.0, None, 1.0,
                             mode="closed-loop").mode == "closed-loop"
'''


@pytest.mark.parametrize("option", [[], ["--meshlab-load-mode=locust"],
                                    ["--meshlab-load-mode=open-loop"]])
def test_pytest_option_switches_the_default_load_mode(pytester, option: list[str]) -> None:
    from test_plugin import CONFTEST  # tests/test_plugin.py: a minimal in-memory env

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_modes=PLUGIN_TEST)
    result = pytester.runpytest("--meshlab-reports=out", "--meshlab-interval=0",
                                "--meshlab-prometheus=off", *option)
    result.assert_outcomes(passed=1)
