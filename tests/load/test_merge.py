"""meshlab.load.merge: N processes' results merge into exactly the result of one recorder that
saw every request — compared bucket by bucket (every HdrHistogram count), per second too."""

from __future__ import annotations

from typing import Any

import pytest
from _hdr_buckets import buckets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlab.errors import LabError
from meshlab.load import hdr
from meshlab.load.merge import merge_results, series_offset_s
from meshlab.load.recorder import Recorder

EPOCH = 1_700_000_000.0
DURATION_S = 3
URL = "http://fortio-server:8070/echo"

# (latency µs, status, completion second, fraction of that second, process)
Sample = tuple[int, int, int, float, int]


def record(samples: list[Sample], offset_s: float, open_loop: bool) -> dict[str, Any]:
    """The §2 result of one recorder started ``offset_s`` after EPOCH holding ``samples``."""
    recorder = Recorder(DURATION_S, offset_s, open_loop=open_loop)
    for latency_us, status, second, frac, _ in sorted(samples, key=lambda s: s[2] + s[3]):
        if open_loop:
            recorder.record(status, latency_us, second + frac,
                            uncorrected_us=max(1, latency_us // 3), late=latency_us > 5000)
        else:
            recorder.record(status, latency_us, second + frac)
    if open_loop:
        recorder.skip(0.5, 2)
    recorder.finish(float(DURATION_S))
    summary = recorder.summary()
    start = EPOCH + offset_s
    extra = {"distribution": "constant", "connections": 4, "late_threshold_us": 1000,
             "processes": 1} if open_loop else {}
    return {"tool": "meshlab" if open_loop else "locust",
            "mode": "open-loop" if open_loop else "closed-loop", "target_url": URL, "users": 2,
            "rate_per_s": 100.0, "duration_s": float(DURATION_S), "start_epoch_s": start,
            "end_epoch_s": EPOCH + DURATION_S, **extra, **summary,
            "tps": summary["requests"] / (DURATION_S - offset_s)}


def split_vs_one(samples: list[Sample], offsets_s: list[float], open_loop: bool
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(merge of the per-process results, the one-recorder result of all samples)."""
    parts = [record([s for s in samples if s[4] % len(offsets_s) == k], off, open_loop)
             for k, off in enumerate(offsets_s)]
    return merge_results(parts), record(samples, 0.0, open_loop)


def assert_equal_results(merged: dict[str, Any], one: dict[str, Any], processes: int,
                         open_loop: bool) -> None:
    hdr_keys = ["hdr", "hdr_uncorrected"] if open_loop else ["hdr"]
    for key in ("requests", "errors", "status_counts", "error_rate", "latency_us",
                *(["latency_uncorrected_us", "late"] if open_loop else [])):
        assert merged[key] == one[key], key
    for key in hdr_keys:
        assert buckets(merged[key]) == buckets(one[key]), key
    if open_loop:
        assert merged["skipped"] == 2 * processes and merged["connections"] == 4 * processes
    assert merged["processes"] == processes  # users: split in closed loop, as given in open
    assert merged["users"] == (2 if open_loop else 2 * processes)
    assert merged["rate_per_s"] == 100.0 * processes
    assert len(merged["series"]) == len(one["series"]) == DURATION_S
    for got, want in zip(merged["series"], one["series"], strict=True):
        assert list(got) == list(want)  # the same keys in the same order
        for key in got:
            if key in hdr_keys:
                assert buckets(got[key]) == buckets(want[key]), (got["t_s"], key)
            elif key == "skipped":
                assert got[key] == want[key] * processes
            else:
                assert got[key] == want[key], (got["t_s"], key)


SAMPLES = st.lists(st.tuples(
    st.integers(1, 2_000_000), st.sampled_from([200, 200, 200, 503, 0]),
    st.integers(0, DURATION_S - 1), st.floats(0.05, 0.99), st.integers(0, 7)), max_size=60)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=SAMPLES, offsets_s=st.lists(st.floats(0.0, 0.049), min_size=1, max_size=4),
       open_loop=st.booleans())
def test_merge_of_any_split_equals_one_recorder_of_all_samples(samples, offsets_s, open_loop):
    """Property: however the samples are split over processes (started up to 49 ms apart, no
    request in the 50 ms at a second's start, where a process's second differs from the merged
    clock's), the merge equals the one-recorder result, every bucket of every histogram."""
    merged, one = split_vs_one(samples, offsets_s, open_loop)
    assert_equal_results(merged, one, len(offsets_s), open_loop)


def test_merged_histograms_of_three_processes_equal_one_histogram_of_all_samples():
    """A fixed split of 3000 samples (µs to seconds, every status) over 3 recorders."""
    samples = [((i * 7919) % 3_000_000 + 1, (200, 200, 404, 0)[i % 4], i % DURATION_S,
                0.05 + (i % 90) / 100, i) for i in range(3000)]
    merged, one = split_vs_one(samples, [0.0, 0.012, 0.031], open_loop=True)
    assert_equal_results(merged, one, 3, open_loop=True)
    assert merged["requests"] == 3000 and sum(buckets(merged["hdr"])) == 3000
    assert merged["start_epoch_s"] == EPOCH and merged["end_epoch_s"] == EPOCH + DURATION_S
    assert merged["tps"] == pytest.approx(3000 / DURATION_S)
    assert merged["latency_us"]["p99"] == hdr.percentiles(hdr.decode(one["hdr"]))["p99"]


def test_series_are_aligned_to_the_earliest_start_by_whole_seconds():
    """A process that started 0.7 s after the other has its point t_s=0 merged into second 1
    (round half up); a second no process covers is an empty point."""
    assert [series_offset_s(EPOCH + d, EPOCH) for d in (0.0, 0.004, 0.499, 0.5, 0.7, 2.2)] == [
        0, 0, 0, 1, 1, 2]
    early = record([(1000, 200, 0, 0.5, 0)], 0.0, open_loop=False)
    late = record([(1500, 503, 0, 0.9, 0)], 0.0, open_loop=False)
    late["start_epoch_s"] += 2.2
    late["end_epoch_s"] += 2.2
    merged = merge_results([early, late])
    by_t = {p["t_s"]: p for p in merged["series"]}
    assert by_t[0]["requests"] == 1 and by_t[0]["p50_us"] == 1000
    assert by_t[2]["status_counts"] == {"503": 1} and by_t[2]["max_us"] == 1500
    assert by_t[2]["requests"] == 1 and buckets(by_t[2]["hdr"]) == buckets(late["hdr"])
    assert (by_t[1]["requests"], by_t[1]["p99_us"], by_t[1]["hdr"]) == (0, None, None)
    assert sorted(by_t) == list(range(2 + DURATION_S))  # the late one's 3 points from 2 on
    assert merged["end_epoch_s"] == EPOCH + DURATION_S + 2.2
    assert merged["tps"] == pytest.approx(2 / (DURATION_S + 2.2), abs=1e-3)


def test_a_single_result_merges_to_itself_and_merges_compose():
    one = record([(500, 200, 1, 0.5, 0), (900, 200, 2, 0.1, 0)], 0.0, open_loop=True)
    assert merge_results([one]) == {**one, "tps": round(one["tps"], 3)}
    a, b = (record([(500 + k, 200, k % 3, 0.5, 0)], 0.0, open_loop=True) for k in range(2))
    twice = merge_results([merge_results([a, b]), merge_results([a])])
    flat = merge_results([a, b, a])
    assert twice["processes"] == flat["processes"] == 3
    assert buckets(twice["hdr"]) == buckets(flat["hdr"]) and twice["series"] == flat["series"]


def test_results_of_different_loads_or_missing_histograms_are_refused():
    a = record([(500, 200, 0, 0.5, 0)], 0.0, open_loop=False)
    with pytest.raises(LabError, match="target_url differs"):
        merge_results([a, {**a, "target_url": "http://other/"}])
    with pytest.raises(LabError, match="tool differs"):
        merge_results([a, record([(500, 200, 0, 0.5, 0)], 0.0, open_loop=True)])
    with pytest.raises(LabError, match="hdr is missing in 1 of 2"):
        merge_results([a, {**a, "hdr": None}])
    with pytest.raises(LabError, match="none given"):
        merge_results([])
    unthrottled = merge_results([a, {**a, "rate_per_s": None}])
    assert unthrottled["rate_per_s"] is None
