"""Acceptance (issue #7): the open-loop runner against a server that stalls for a known time at
known moments reports the exactly computable corrected distribution; the uncorrected one shows
coordinated omission; late and skipped requests are counted as the schedule says.

Server and runner share a private netns (``_open_loop_netns.py``). Under a constant rate R, the
server pausing for S seconds when request ``n`` arrives holds every request intended in
``[(n-1)/R, (n-1)/R + S)``: the one intended ``k/R`` into the pause waits ``S - k/R`` (+ the
server's base time, ~0.1 ms, negligible beside S), every other request only the base time
(``benchmarks/_stall_server.py`` ``expected_percentiles`` computes the distribution through the
same µs HdrHistogram). With ``C`` connections only the first ``C`` requests of a pause are sent
on time; the rest queue for a connection and are sent when it ends, so they are late, and
measured from their send (uncorrected) they look fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _open_loop_netns import completed, ss

RATE_PER_S = 1000
DURATION_S = 6
CONNECTIONS = 8
STALL_S = 0.5
STALL_AT = (2001, 4001)  # 1-based request numbers: pauses starting at t = 2.0 s and 4.0 s
TOLERANCE = 0.10


def test_corrected_percentiles_match_the_computed_distribution(tmp_path: Path) -> None:
    out = tmp_path / "stall.json"
    run = completed(out, "--rate-per-s", str(RATE_PER_S), "--duration-s", str(DURATION_S),
                    "--connections", str(CONNECTIONS), "--timeout-s", "5",
                    stall_at=STALL_AT, stall_s=STALL_S)
    result = run.result
    scheduled = RATE_PER_S * DURATION_S
    assert [s["at_request"] for s in run.stalls] == list(STALL_AT)
    assert result["requests"] == scheduled == run.received and result["skipped"] == 0
    assert result["errors"] == 0

    expected = ss.expected_percentiles(RATE_PER_S, scheduled,
                                       ss.StallPlan(stall_at=STALL_AT, stall_s=STALL_S))
    corrected, uncorrected = result["latency_us"], result["latency_uncorrected_us"]
    for key in ("p99", "p999"):
        assert corrected[key] == pytest.approx(expected[key], rel=TOLERANCE), (
            key, corrected, expected)
    assert corrected["max"] == pytest.approx(STALL_S * 1e6, rel=TOLERANCE)
    # coordinated omission: measured from the send, the queued requests look fast and only
    # the few in flight when each pause began show it (2 x 8 of 6000: above p99.9, below p99)
    assert uncorrected["p99"] < corrected["p99"] / 10
    assert uncorrected["max"] == pytest.approx(STALL_S * 1e6, rel=TOLERANCE)

    # late: per pause, the requests queued behind the 8 stuck connections (k = 8 .. S*R - 2 are
    # more than 1 ms late); noise on a busy machine may add a few, never remove them
    queued = len(STALL_AT) * (round(STALL_S * RATE_PER_S) - CONNECTIONS - 1)
    assert queued - 2 * CONNECTIONS <= result["late"] < scheduled / 2
    for second in (2, 4):  # completion-bucketed: the pauses end in these seconds
        point = result["series"][second]
        assert point["max_us"] >= 0.9 * STALL_S * 1e6 and point["late"] >= queued // 2 - 16


def test_requests_queued_when_the_run_ends_are_skipped(tmp_path: Path) -> None:
    # R = 500/s for 2 s; the server pauses 1 s from request 751 (t = 1.5 s): requests 750..753
    # take the 4 connections, the 246 intended in [1.508, 2.0) wait for one and are skipped at
    # the end; the 4 in flight are still waited for (answered at 2.5 s) and recorded
    out = tmp_path / "skip.json"
    run = completed(out, "--rate-per-s", "500", "--duration-s", "2", "--connections", "4",
                    "--timeout-s", "5", stall_at=(751,), stall_s=1.0)
    result = run.result
    assert result["requests"] + result["skipped"] == 1000
    assert result["requests"] == run.received
    assert abs(result["skipped"] - 246) <= 3
    assert result["series"][1]["skipped"] == result["skipped"]  # intended in second 1
    assert result["status_counts"] == {"200": result["requests"]}
    assert result["latency_us"]["max"] == pytest.approx(1e6, rel=TOLERANCE)
    assert result["end_epoch_s"] - result["start_epoch_s"] >= 2.4  # waited for the 4
