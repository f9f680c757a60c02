"""The runner process against a real HTTP/1.1 server on 127.0.0.1 (each load bounded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshlab.load import hdr


def _result(out: Path) -> dict[str, Any]:
    return json.loads(out.read_text())


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, proc.stderr


def _check_consistent(result: dict[str, Any]) -> None:
    """Invariants of every §2 result."""
    assert result["tool"] == "locust" and result["mode"] == "closed-loop"
    assert sum(result["status_counts"].values()) == result["requests"]
    assert sum(p["requests"] for p in result["series"]) == result["requests"]
    assert sum(p["errors"] for p in result["series"]) == result["errors"]
    assert [p["t_s"] for p in result["series"]] == list(range(len(result["series"])))
    histogram = hdr.decode(result["hdr"])
    assert histogram.get_total_count() == result["requests"]
    assert hdr.percentiles(histogram) == result["latency_us"]
    assert result["end_epoch_s"] > result["start_epoch_s"]


def test_requests_counted_equal_server_side_count(target, runner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", target.url(), "--users", "4", "--duration-s", "8",
                     "--max-requests", "500", "--timeout-s", "5", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert result["requests"] == 500 == target.total
    assert result["status_counts"] == {"200": 500}
    assert result["errors"] == 0 and result["error_rate"] == 0.0
    assert result["end_epoch_s"] - result["start_epoch_s"] < 8  # stopped at the count
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_status_counts_for_a_503_mix(target, runner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", target.url(fail_every=4), "--users", "3", "--duration-s", "8",
                     "--max-requests", "400", "--timeout-s", "5", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert result["status_counts"] == {"200": 300, "503": 100}
    assert target.status_counts == {200: 300, 503: 100}
    assert result["errors"] == 100
    assert result["error_rate"] == pytest.approx(0.25)


def test_latency_has_microsecond_resolution(target, runner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", target.url(delay_us=2500), "--users", "2", "--duration-s", "8",
                     "--max-requests", "200", "--timeout-s", "5", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    latency = result["latency_us"]
    assert 2500 <= latency["min"] <= latency["p50"] <= 4000, latency
    # Locust's own stats would round to whole ms: 3 or 4 distinct values at most
    distinct = {item.value_iterated_to for item in hdr.decode(result["hdr"]).get_recorded_iterator()}
    assert len(distinct) > 10
    assert latency["p50"] % 1000 != 0 or latency["p90"] % 1000 != 0


def test_rate_limit_holds_the_aggregate_rate(target, runner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", target.url(), "--users", "4", "--rate-per-s", "100",
                     "--duration-s", "3", "--timeout-s", "5", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert 270 <= result["requests"] <= 330, result["requests"]
    assert result["rate_per_s"] == 100.0 and result["duration_s"] == 3.0
    assert result["tps"] == pytest.approx(100, rel=0.1)
    assert len(result["series"]) == 3
    assert all(80 <= p["requests"] <= 120 for p in result["series"]), result["series"]


def test_end_waits_for_requests_in_flight(target, runner, tmp_path: Path) -> None:
    """At the end of the duration no new request starts, and the ones in flight complete and
    are recorded (the tail is not cut off; the server sees no aborted request)."""
    out = tmp_path / "r.json"
    proc, wall_s = runner("--url", target.url(delay_us=2_000_000), "--users", "2",
                          "--duration-s", "1", "--timeout-s", "10", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert result["requests"] == 2 and result["status_counts"] == {"200": 2}
    assert 2_000_000 <= result["latency_us"]["p50"] < 3_000_000
    assert wall_s < 6.5  # 2 s of delay plus interpreter/locust start-up


def test_in_flight_drain_is_bounded_by_the_request_timeout(target, runner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, wall_s = runner("--url", target.url(delay_us=5_000_000), "--users", "2",
                          "--duration-s", "1", "--timeout-s", "1.5", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert result["requests"] == 2 and result["status_counts"] == {"0": 2}
    assert wall_s < 4.5  # not the 5 s delay

def test_connection_refused_counts_as_status_0(closed_port: int, runner,
                                               tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", f"http://127.0.0.1:{closed_port}/", "--users", "2",
                     "--duration-s", "3", "--max-requests", "50", "--timeout-s", "1",
                     "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert result["status_counts"] == {"0": 50}
    assert result["errors"] == 50 and result["error_rate"] == 1.0


def test_connection_closed_without_response_counts_as_status_0(target, runner,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", target.url(hang_up=1), "--users", "2", "--duration-s", "3",
                     "--max-requests", "30", "--timeout-s", "1", "--out", str(out))
    _ok(proc)
    result = _result(out)
    _check_consistent(result)
    assert result["status_counts"] == {"0": 30}
    assert "unexpected" not in proc.stderr


def test_read_timeout_counts_as_status_0(target, runner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc, _ = runner("--url", target.url(delay_us=2_000_000), "--users", "1",
                     "--duration-s", "3", "--max-requests", "1", "--timeout-s", "0.3",
                     "--out", str(out))
    _ok(proc)
    result = _result(out)
    assert result["status_counts"] == {"0": 1}
    assert 300_000 <= result["latency_us"]["p50"] < 1_000_000


BAD_ARGS = [
    (["--users", "0"], "--users"),
    (["--duration-s", "0"], "--duration-s"),
    (["--duration-s", "3601"], "--duration-s"),
    (["--rate-per-s", "-5"], "--rate-per-s"),
    (["--max-requests", "0"], "--max-requests"),
    (["--timeout-s", "0"], "--timeout-s"),
    (["--url", "ftp://127.0.0.1/"], "--url"),
    (["--url", "127.0.0.1:8080"], "--url"),
    (["--users", "many"], "--users"),
    (["--out", "/nonexistent-dir/r.json"], "--out"),
]


@pytest.mark.parametrize(("override", "named"), BAD_ARGS)
def test_bad_args_exit_non_zero_with_message(override: list[str], named: str, runner,
                                             tmp_path: Path) -> None:
    args = {"--url": "http://127.0.0.1:9/", "--users": "1", "--duration-s": "1",
            "--timeout-s": "1", "--out": str(tmp_path / "r.json")}
    args.update(dict(zip(override[::2], override[1::2], strict=True)))
    proc, wall_s = runner(*[x for kv in args.items() for x in kv])
    assert proc.returncode == 2
    assert named in proc.stderr and "error" in proc.stderr
    assert not (tmp_path / "r.json").exists()
    assert wall_s < 3  # rejected before any load starts


def test_missing_required_arg(runner, tmp_path: Path) -> None:
    proc, _ = runner("--users", "1", "--duration-s", "1", "--timeout-s", "1",
                     "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert "--url" in proc.stderr
