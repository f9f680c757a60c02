"""meshlab.load.recorder: totals, error classification and the per-second series."""

from __future__ import annotations

import pytest

from meshlab.load import hdr
from meshlab.load.recorder import Recorder, is_error


@pytest.mark.parametrize(("status", "error"), [(0, True), (200, False), (204, False),
                                               (302, False), (404, True), (503, True)])
def test_is_error(status: int, error: bool) -> None:
    assert is_error(status) is error


def test_series_buckets_by_completion_second() -> None:
    rec = Recorder(duration_s=4.0, start_s=100.0)
    rec.record(200, 1500.0, 100.1)
    rec.record(503, 2500.0, 100.9)
    rec.record(0, 6_000_000.0, 102.5)  # second 1 had nothing
    rec.finish(104.003)  # a timer firing 3 ms late opens no fifth second
    summary = rec.summary()
    assert summary["requests"] == 3
    assert summary["errors"] == 2
    assert summary["status_counts"] == {"0": 1, "200": 1, "503": 1}
    assert summary["error_rate"] == pytest.approx(2 / 3)
    series = summary["series"]
    assert [p["t_s"] for p in series] == [0, 1, 2, 3]
    assert [p["requests"] for p in series] == [2, 0, 1, 0]
    assert series[0]["status_counts"] == {"200": 1, "503": 1}
    assert series[0]["errors"] == 1
    assert series[0]["p50_us"] == 1500 and series[0]["max_us"] in (2501, 2500)
    assert series[1]["p50_us"] is None and series[1]["status_counts"] == {}
    assert hdr.decode(summary["hdr"]).get_total_count() == 3
    assert summary["latency_us"]["min"] == 1500


def test_late_completions_fold_into_last_second_and_closed_recorder_ignores() -> None:
    rec = Recorder(duration_s=2.0, start_s=0.0)
    assert rec.record(200, 10.0, 2.2)
    rec.finish(2.3)
    assert not rec.record(200, 10.0, 2.4)
    series = rec.summary()["series"]
    assert [p["requests"] for p in series] == [0, 1]


def test_early_finish_has_only_elapsed_seconds() -> None:
    rec = Recorder(duration_s=60.0, start_s=0.0)
    rec.record(200, 100.0, 0.5)
    rec.finish(1.5)
    assert [p["t_s"] for p in rec.summary()["series"]] == [0, 1]
