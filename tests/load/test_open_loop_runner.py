"""The open-loop runner process against a real HTTP/1.1 server, both in a private netns: the
result has exactly the keys of CONTRACTS.md §2, every scheduled request is accounted for
(completed or skipped), and the stop semantics match the Locust runner's. Each load is bounded
by a duration of a few seconds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from _open_loop_netns import completed, run_open_loop, stop_after


def test_result_has_the_contract_keys_and_accounts_for_every_request(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = completed(out, "--rate-per-s", "500", "--duration-s", "2", "--connections", "8",
                    "--timeout-s", "2")
    result = run.result
    assert result["requests"] + result["skipped"] == 1000  # i / 500 for i < 1000
    assert result["requests"] == run.received  # the server saw each exactly once
    assert result["status_counts"] == {"200": result["requests"]}
    assert result["skipped"] == 0
    assert (result["distribution"], result["connections"], result["rate_per_s"]) == (
        "constant", 8, 500.0)
    assert result["series"][0]["requests"] >= 490  # on schedule from the start
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_poisson_arrivals_are_reproducible_with_a_seed(tmp_path: Path) -> None:
    counts = []
    for attempt in range(2):
        out = tmp_path / f"p{attempt}.json"
        run = completed(out, "--rate-per-s", "400", "--duration-s", "2", "--distribution",
                        "poisson", "--seed", "7", "--timeout-s", "2")
        assert run.result["distribution"] == "poisson"
        counts.append(run.result["requests"] + run.result["skipped"])
    assert counts[0] == counts[1]  # the same seed, the same schedule
    assert abs(counts[0] - 800) < 4 * 800 ** 0.5  # Poisson(800): within 4 sigma


def test_max_requests_ends_the_run_once_they_completed(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = completed(out, "--rate-per-s", "1000", "--duration-s", "10", "--max-requests",
                    "300", "--timeout-s", "2")
    assert run.result["requests"] == 300 == run.received
    assert run.result["end_epoch_s"] - run.result["start_epoch_s"] < 3
    assert run.result["skipped"] <= 5  # intended before the end, not taken past the 300th


def test_refused_connections_are_status_0(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:  # a host port number, unused in the netns
        port = sock.getsockname()[1]
    out = tmp_path / "r.json"
    run = completed(out, "--rate-per-s", "100", "--duration-s", "1", "--timeout-s", "1",
                    port=port)
    assert run.result["status_counts"] == {"0": 100}
    assert run.result["errors"] == 100 and run.result["error_rate"] == 1.0


def test_timeout_fails_the_request_and_queued_requests_are_skipped(tmp_path: Path) -> None:
    # the first request pauses the server for 5 s; with 2 connections and a 0.4 s timeout,
    # requests time out (status 0, their connection replaced) and the rest queue until the end
    out = tmp_path / "r.json"
    run = completed(out, "--rate-per-s", "20", "--duration-s", "1", "--connections", "2",
                    "--timeout-s", "0.4", stall_at=(1,), stall_s=5.0)
    result = run.result
    assert set(result["status_counts"]) == {"0"} and result["requests"] >= 4
    assert result["requests"] + result["skipped"] == 20
    assert result["skipped"] >= 10 and result["late"] >= 1
    for key in ("p50", "max"):  # each failed after ~0.4 s from its send
        assert 400_000 <= result["latency_uncorrected_us"][key] < 1_000_000


def test_sigterm_writes_the_partial_result(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = completed(out, "--rate-per-s", "200", "--duration-s", "60", "--timeout-s", "2",
                    while_running=stop_after(100), timeout_s=30)
    result = run.result
    assert result["duration_s"] == 60
    assert result["end_epoch_s"] - result["start_epoch_s"] < 10
    assert result["requests"] >= 100 and result["requests"] == run.received
    assert result["skipped"] <= 2


@pytest.mark.parametrize(("args", "named"), [
    (["--rate-per-s", "100", "--connections", "0"], "--connections"),
    (["--rate-per-s", "100", "--distribution", "uniform"], "--distribution"),
    (["--connections", "4"], "--rate-per-s"),  # open loop needs a rate
])
def test_bad_open_loop_args_exit_2_naming_the_option(args: list[str], named: str,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = run_open_loop(out, *args, "--duration-s", "1", "--timeout-s", "1")
    assert run.proc.returncode == 2
    assert named in run.proc.stderr and "error" in run.proc.stderr
    assert run.result is None and run.received == 0
