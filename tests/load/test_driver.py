"""meshlab.load.driver: LoadSpec validation, result parsing, run_load/start_load via a Shell."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from meshlab.envs.base import Shell
from meshlab.errors import ConfigError, LabError
from meshlab.load import hdr
from meshlab.load.driver import LoadResult, LoadSpec, read_result, runner_argv
from meshlab.load.locust_runner import parse_args
from meshlab.load.start import run_load, start_load

GOOD: dict[str, Any] = {"url": "http://127.0.0.1:8080/echo", "users": 2, "duration_s": 1.0}


@pytest.mark.parametrize(("field", "value"), [
    ("url", "ftp://host/"), ("url", "no-scheme"), ("url", "http://"), ("url", "http://h:99999/"),
    ("users", 0), ("users", 1.5), ("users", True), ("users", 10_001),
    ("rate_per_s", 0), ("rate_per_s", -1.0), ("rate_per_s", float("inf")),
    ("duration_s", 0), ("duration_s", -1), ("duration_s", 3600.5), ("duration_s", float("nan")),
    ("max_requests", 0), ("max_requests", 2.0),
    ("timeout_s", 0), ("name", ""),
])
def test_spec_rejects_bad_field_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^LoadSpec\.{field}: "):
        LoadSpec(**{**GOOD, field: value})


def test_spec_accepts_edges() -> None:
    spec = LoadSpec(url="https://svc.mark.svc.cluster.local:8443/x?y=1", users=1,
                    duration_s=3600, rate_per_s=0.5, max_requests=1, timeout_s=0.1, name="b")
    assert spec.duration_s == 3600


def test_runner_argv_round_trips_through_the_cli(tmp_path: Path) -> None:
    spec = LoadSpec(url="http://fortio-server:8080/echo?size=10", users=4, rate_per_s=200.0,
                    duration_s=5.0, max_requests=1000, timeout_s=6.0)
    argv = runner_argv(spec, tmp_path / "r.json", python="/usr/bin/python3")
    assert argv[:3] == ["/usr/bin/python3", "-m", "meshlab.load.locust_runner"]
    parsed, out = parse_args(argv[3:])
    assert parsed == spec and out == tmp_path / "r.json"
    bare = LoadSpec(**GOOD)
    assert "--rate-per-s" not in runner_argv(bare, tmp_path / "r.json")
    assert parse_args(runner_argv(bare, tmp_path / "r.json")[3:])[0] == bare


def test_shell_protocol_is_implemented(shell) -> None:
    assert isinstance(shell, Shell)


def test_run_load_returns_parsed_result(shell, target, tmp_path: Path) -> None:
    spec = LoadSpec(url=target.url(fail_every=5), users=2, duration_s=5, max_requests=100,
                    timeout_s=2, name="baseline")
    result = run_load(shell, spec, tmp_path / "baseline.json")
    assert isinstance(result, LoadResult)
    assert result.name == "baseline"
    assert result.requests == 100 == target.total
    assert result.status_counts == {"200": 80, "503": 20}
    assert result.errors == 20 and result.error_rate == pytest.approx(0.2)
    assert 0 < result.elapsed_s < 5
    assert result.histogram().get_total_count() == 100
    assert sum(p.requests for p in result.series) == 100
    data = result.to_dict()
    assert list(data)[:2] == ["name", "tool"]
    on_disk = json.loads((tmp_path / "baseline.json").read_text())
    assert {k: v for k, v in data.items() if k != "name"} == on_disk
    assert LoadResult.from_dict(data) == result
    merged = hdr.merge([result.hdr, result.hdr])
    assert merged.get_total_count() == 200


def test_run_load_failure_raises_lab_error_with_stderr(shell, tmp_path: Path) -> None:
    spec = LoadSpec(url="http://127.0.0.1:9/", users=1, duration_s=1, timeout_s=1, name="x")
    with pytest.raises(LabError, match=r"(?s)load .x. failed \(exit 2\).*--out: directory"):
        run_load(shell, spec, tmp_path / "missing-dir" / "r.json")


def test_run_load_does_not_read_a_stale_file(shell, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("{}")
    spec = LoadSpec(url="http://127.0.0.1:9/", users=1, duration_s=1, timeout_s=1)
    with pytest.raises(LabError, match="cannot read load result"):
        run_load(shell, spec, out, python="/bin/true")


def test_start_load_runs_in_background_while_the_test_continues(shell, target,
                                                                tmp_path: Path) -> None:
    spec = LoadSpec(url=target.url(), users=2, rate_per_s=50, duration_s=2.5, timeout_s=2,
                    name="bg")
    handle = start_load(shell, spec, tmp_path / "bg.json")
    assert handle.running
    deadline = time.monotonic() + 5
    while target.total < 10 and time.monotonic() < deadline:  # load flows while we "inject"
        time.sleep(0.05)
    assert target.total >= 10
    result = handle.wait()
    assert not handle.running
    assert result.name == "bg"
    assert 100 <= result.requests <= 140
    assert result.requests <= target.total


def test_stop_ends_the_load_early_with_a_partial_result(shell, target, tmp_path: Path) -> None:
    spec = LoadSpec(url=target.url(), users=2, rate_per_s=100, duration_s=60, timeout_s=2)
    handle = start_load(shell, spec, tmp_path / "early.json")
    deadline = time.monotonic() + 10
    while target.total <= 60 and time.monotonic() < deadline:  # poll: load is flowing
        time.sleep(0.05)
    assert target.total > 60
    result = handle.stop()
    assert result.elapsed_s < 5
    assert result.requests > 50
    assert result.duration_s == 60


def test_wait_timeout_kills_the_runner(shell, target, tmp_path: Path) -> None:
    spec = LoadSpec(url=target.url(), users=1, rate_per_s=10, duration_s=30, timeout_s=2,
                    name="slow")
    handle = start_load(shell, spec, tmp_path / "slow.json")
    with pytest.raises(LabError, match="did not finish"):
        handle.wait(timeout_s=0.5)
    assert not handle.running


def test_read_result_rejects_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"tool": "locust"}')
    with pytest.raises(LabError, match="malformed load result"):
        read_result(path)
    path.write_text("[1, 2]")
    with pytest.raises(LabError, match="not a JSON object"):
        read_result(path)
