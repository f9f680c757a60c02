"""meshlab.load.group: ``LoadSpec(processes=N)`` splits a load over N real runner processes
(through a Shell, against the 127.0.0.1 target) and returns their exact merge; run_load and
start_load share the path; a failing process stops its siblings."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _hdr_buckets import buckets

from meshlab.errors import ConfigError, LabError
from meshlab.load import hdr
from meshlab.load.driver import LoadResult, LoadSpec
from meshlab.load.group import LoadGroup, part_path, shares, split_spec
from meshlab.load.spec import MAX_PROCESSES
from meshlab.load.start import run_load, start_load
from meshlab.polling import wait_until

URL = "http://127.0.0.1:8080/echo"


def parts_of(out: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads(part_path(out, i).read_text()) for i in range(n)]


def test_shares_split_exactly_with_the_remainder_first():
    assert shares(10, 3) == [4, 3, 3] and shares(1001, 4) == [251, 250, 250, 250]
    assert shares(2, 2) == [1, 1] and sum(shares(12345, 7)) == 12345


def test_split_spec_divides_rate_users_and_requests():
    spec = LoadSpec(url=URL, users=5, rate_per_s=300.0, duration_s=4, max_requests=1001,
                    name="base", processes=3)
    parts = split_spec(spec)
    assert [p.users for p in parts] == [2, 2, 1]
    assert [p.max_requests for p in parts] == [334, 334, 333]
    assert [p.rate_per_s for p in parts] == [100.0] * 3
    assert [p.name for p in parts] == ["base.p0", "base.p1", "base.p2"]
    assert {(p.processes, p.duration_s, p.url) for p in parts} == {(1, 4, URL)}
    open_parts = split_spec(LoadSpec(url=URL, users=1, duration_s=1, mode="open-loop",
                                     rate_per_s=1000, connections=10, seed=7, processes=4))
    assert [(p.connections, p.users, p.seed) for p in open_parts] == [
        (3, 1, 7), (3, 1, 8), (2, 1, 9), (2, 1, 10)]
    assert split_spec(LoadSpec(url=URL, users=1, duration_s=1)) == [
        LoadSpec(url=URL, users=1, duration_s=1)]
    assert part_path(Path("/r/load-base.json"), 2) == Path("/r/load-base.p2.json")


@pytest.mark.parametrize(("fields", "message"), [
    ({"processes": 0}, f"must be an integer in 1..{MAX_PROCESSES}"),
    ({"processes": MAX_PROCESSES + 1}, "must be an integer in"),
    ({"processes": 2.0}, "must be an integer in"),
    ({"processes": 3, "users": 2}, r"3 processes need users >= 3 .*got users=2"),
    ({"processes": 2, "users": 2, "max_requests": 1}, "2 processes need max_requests >= 2"),
    ({"processes": 3, "mode": "open-loop", "rate_per_s": 10, "connections": 2},
     "3 processes need connections >= 3"),
])
def test_processes_is_validated_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=rf"^LoadSpec\.processes: {message}"):
        LoadSpec(**{"url": URL, "users": 4, "duration_s": 1, **fields})


def test_run_load_with_two_processes_returns_their_exact_merge(shell, target, tmp_path):
    spec = LoadSpec(url=target.url(fail_every=10), users=4, rate_per_s=200, duration_s=5,
                    max_requests=101, timeout_s=2, name="split", processes=2)
    out = tmp_path / "load-split.json"
    result = run_load(shell, spec, out)
    assert isinstance(result, LoadResult) and result.processes == 2 and result.name == "split"
    a, b = parts_of(out, 2)
    assert (a["requests"], b["requests"]) == (51, 50) and a["users"] == b["users"] == 2
    assert a["rate_per_s"] == b["rate_per_s"] == 100.0
    assert result.requests == 101 == target.total
    assert result.status_counts == {"200": 91, "503": 10} and result.errors == 10
    assert buckets(result.hdr) == buckets(hdr.encode(hdr.merge([a["hdr"], b["hdr"]])))
    for key in ("p50", "p99", "max"):  # a mixture's quantile lies between the parts' ones
        low, high = sorted((a["latency_us"][key], b["latency_us"][key]))
        assert low <= result.latency_us[key] <= high
    assert sum(p.requests for p in result.series) == 101
    assert result.start_epoch_s == min(a["start_epoch_s"], b["start_epoch_s"])
    assert json.loads(out.read_text())["processes"] == 2  # the merged file beside the parts


def test_open_loop_processes_merge_corrected_uncorrected_late_and_skipped(shell, target,
                                                                         tmp_path):
    spec = LoadSpec(url=target.url(), mode="open-loop", rate_per_s=200, duration_s=5,
                    max_requests=101, timeout_s=2, connections=5, name="ol", processes=2)
    out = tmp_path / "load-ol.json"
    result = run_load(shell, spec, out)
    a, b = parts_of(out, 2)
    assert (a["connections"], b["connections"], a["rate_per_s"]) == (3, 2, 100.0)
    assert (a["requests"], b["requests"]) == (51, 50) and target.total == 101
    assert (result.mode, result.processes, result.requests, result.connections) == (
        "open-loop", 2, 101, 5)
    assert (result.late, result.skipped) == (a["late"] + b["late"], a["skipped"] + b["skipped"])
    for key in ("hdr", "hdr_uncorrected"):
        assert buckets(getattr(result, key)) == buckets(hdr.encode(hdr.merge([a[key], b[key]])))
    merged = json.loads(out.read_text())
    assert sum(p["skipped"] for p in merged["series"]) == result.skipped
    assert sum(p["late"] for p in merged["series"]) == result.late


def test_start_load_with_processes_is_a_group_that_stops_them_all(shell, target, tmp_path):
    spec = LoadSpec(url=target.url(), users=3, rate_per_s=150, duration_s=60, timeout_s=2,
                    name="bg", processes=3)
    handle = start_load(shell, spec, tmp_path / "bg.json")
    assert isinstance(handle, LoadGroup) and handle.running and len(handle.handles) == 3
    wait_until(lambda: target.total, lambda n: n > 60, timeout_s=15, what="load flowing")
    result = handle.stop()
    assert not handle.running and result.processes == 3 and result.elapsed_s < 10
    parts = parts_of(tmp_path / "bg.json", 3)
    assert result.requests == sum(p["requests"] for p in parts) > 60
    assert result.requests <= target.total
    assert all(p["requests"] > 0 for p in parts)


class FailingPartShell:
    """Runs every runner through ``inner``, except that part ``fail`` exits 1 at once."""

    name = "failing-part"

    def __init__(self, inner: Any, fail: int) -> None:
        self.inner, self.fail = inner, fail

    def run(self, argv: list[str], **kwargs: Any) -> Any:
        return self.inner.run(argv, **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> Any:
        if argv[argv.index("--out") + 1].endswith(f".p{self.fail}.json"):
            argv = [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(1)"]
        return self.inner.popen(argv, **kwargs)


def test_a_failing_process_fails_the_load_and_stops_the_others(shell, target, tmp_path):
    spec = LoadSpec(url=target.url(), users=3, rate_per_s=20, duration_s=30, timeout_s=2,
                    name="bad", processes=3)
    group = start_load(FailingPartShell(shell, fail=1), spec, tmp_path / "bad.json")
    started = time.monotonic()
    with pytest.raises(LabError, match=r"load 'bad': process 1 of 3: .*exit 1.*boom"):
        group.wait()
    assert time.monotonic() - started < 20  # the others were stopped, not waited for
    assert not group.running
    assert not (tmp_path / "bad.json").exists()
