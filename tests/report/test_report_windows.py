"""windows.py: steady state / fault window / recovery rows with exact merged percentiles.

The load is recorded by the real :class:`meshlab.load.recorder.Recorder`, so the per-second
``hdr`` histograms are the ones the locust runner writes.
"""

from __future__ import annotations

import copy
from functools import cache

from meshlab.load import hdr
from meshlab.load.recorder import Recorder
from meshlab.report.series import AccessTarget
from meshlab.report.windows import second_periods, window_rows, window_tables

E = 1_800_000_000.0
FAULT = {"name": "packet-drop", "start_epoch_s": E + 10.0, "end_epoch_s": E + 20.0}


def _latency_us(second: int, i: int) -> int:
    if 10 <= second < 20:
        return 900_000 if i == 0 else 50_000 + 100 * i
    return 1_000 + 7 * i if second < 10 else 1_500 + 3 * i


def _recorded_load() -> dict:
    return copy.deepcopy(_recorded())


@cache
def _recorded(end_s: float = 29.5) -> dict:
    recorder = Recorder(duration_s=30, start_s=0.0)
    for second in range(30):
        for i in range(50):
            status = 503 if 10 <= second < 20 and i < 2 else 200
            recorder.record(status, _latency_us(second, i), second + i / 50)
    recorder.finish(end_s)
    summary = recorder.summary()
    return {"name": "drop", "start_epoch_s": E, "end_epoch_s": E + end_s, "duration_s": 30.0,
            "requests": summary["requests"], "errors": summary["errors"],
            "series": summary["series"]}


def _expected_ms(seconds: range) -> list[str]:
    hist = hdr.new_histogram()
    for second in seconds:
        for i in range(50):
            hdr.record_us(hist, _latency_us(second, i))
    summary = hdr.percentiles(hist)
    return [f"{summary[k] / 1000:.3f}" for k in ("p50", "p90", "p99", "p999", "max")]


def test_periods_split_seconds_by_overlap_with_the_window():
    periods = second_periods(_recorded_load(), [FAULT])

    assert [(label, kind) for label, kind, _, _ in periods] == [
        ("steady state", "steady"), ("packet-drop", "fault"), ("recovery", "recovery")]
    assert [[p["t_s"] for p in pts] for _, _, pts, _ in periods] == [
        list(range(10)), list(range(10, 20)), list(range(20, 30))]
    assert [covered for *_, covered in periods] == [10.0, 10.0, 9.5]  # last second is half


def test_rows_have_exact_merged_percentiles_tps_and_errors():
    rows = window_rows(_recorded_load(), [FAULT], accesslog=None)

    steady, fault, recovery = rows
    assert steady["latency_ms"] == _expected_ms(range(10))
    assert fault["latency_ms"] == _expected_ms(range(10, 20))
    assert recovery["latency_ms"] == _expected_ms(range(20, 30))
    assert fault["latency_ms"][-1] == "900.095"  # the one slow request per second (bucketed)
    assert all(row["exact"] for row in rows)
    assert steady["tps"] == "50.0" and recovery["tps"] == f"{500 / 9.5:,.1f}"
    assert fault["error_pct"] == "4.000 %" and steady["error_pct"] == "0.000 %"
    assert fault["bad"] and not steady["bad"]
    assert fault["flags"] is None  # access logs not collected


def test_flags_come_from_the_access_log_seconds_inside_each_period():
    accesslog = {"fortio-server-0": AccessTarget("fortio-server-0", counts=[
        (int(E) + 3, "out", "-", 200, 40), (int(E) + 12, "out", "UF", 503, 2),
        (int(E) + 15, "out", "UF", 503, 1), (int(E) + 16, "in", "-", 503, 3),
        (int(E) + 25, "out", "UC", 503, 1), (int(E) + 99, "out", "UH", 503, 5)])}

    steady, fault, recovery = window_rows(_recorded_load(), [FAULT], accesslog)

    assert steady["flags"] == []
    assert fault["flags"] == [{"flag": "HTTP 503 (no flag)", "pod": "fortio-server-0", "count": 3},
                              {"flag": "UF", "pod": "fortio-server-0", "count": 3}]
    assert recovery["flags"] == [{"flag": "UC", "pod": "fortio-server-0", "count": 1}]


def test_without_per_second_histograms_only_the_max_is_shown():
    load = _recorded_load()
    for point in load["series"]:
        point.pop("hdr")

    _, fault, _ = window_rows(load, [FAULT], accesslog=None)

    assert fault["latency_ms"][:4] == ["–"] * 4 and fault["latency_ms"][4] != "–"
    assert not fault["exact"]
    assert window_tables([load], [FAULT], None)[0]["exact"] is False


def test_a_load_outside_every_window_is_all_steady_or_all_recovery():
    before = _recorded_load()
    after = dict(before, start_epoch_s=E + 40, end_epoch_s=E + 69.5)
    open_window = dict(FAULT, end_epoch_s=None)

    assert [r["period"] for r in window_rows(before, [], None)] == ["steady state"]
    assert [r["period"] for r in window_rows(after, [FAULT], None)] == ["recovery"]
    assert [r["period"] for r in window_rows(before, [open_window], None)] == [
        "steady state", "packet-drop"]
    assert window_tables([dict(before, series=[])], [FAULT], None) == []
