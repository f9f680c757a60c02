"""The sampler's scheduling, gap lines, skipped reads and files, with in-process targets."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from meshlab.collectors.sampler import SERIES, Sampler
from meshlab.errors import ConfigError, LabError
from meshlab.polling import wait_until


class Counting:
    series = "sockets"

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0

    def read(self) -> dict:
        self.n += 1
        return {"n": self.n}


class Failing:
    series = "conntrack"
    name = "worknode6"

    def read(self) -> dict:
        raise LabError("network namespace ml-cola-n1 does not exist")


class Broken:
    series = "conntrack"
    name = "odd"

    def read(self) -> dict:
        raise KeyError("not a MeshlabError either")


class Blocked:
    series = "envoy_stats"
    name = "fortio-server-l2-0"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = False

    def read(self) -> dict:
        self.release.wait(30)
        return {"counters": {}, "gauges": {}, "histograms": {}}

    def close(self) -> None:
        self.closed = True


class Quiet:
    series = "accesslog"
    name = "fortio-server-0"

    def read(self) -> None:
        return None


def lines(path: Path) -> list[dict]:
    """Complete lines of a series file (a line being written is left out)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_gaps_and_busy_targets_do_not_stop_the_others(tmp_path: Path):
    ok, blocked = Counting("fortio-server-0"), Blocked()
    sampler = Sampler(None, tmp_path, interval_s=0.05,
                      targets=[ok, Failing(), Broken(), blocked, Quiet()])
    with sampler:
        assert sampler.start() is sampler and sampler.running
        wait_until(lambda: (len(lines(sampler.dir / "sockets.jsonl")), sampler.gaps["conntrack"],
                            sampler.skipped["envoy_stats"]),
                   lambda v: v[0] >= 5 and v[1] >= 6 and v[2] >= 3, timeout_s=20,
                   what="samples, gaps and skipped reads")
        blocked.release.set()
    assert not sampler.running and blocked.closed
    socks = lines(sampler.dir / "sockets.jsonl")
    assert [s["n"] for s in socks] == list(range(1, len(socks) + 1))
    assert all(s["target"] == "fortio-server-0" and isinstance(s["t"], float) for s in socks)
    gaps = lines(sampler.dir / "conntrack.jsonl")
    assert {g["target"] for g in gaps} == {"worknode6", "odd"} and all("gap" in g for g in gaps)
    assert any(g["gap"].startswith("LabError: network namespace") for g in gaps)
    assert any(g["gap"].startswith("KeyError:") for g in gaps)
    stats = lines(sampler.dir / "envoy_stats.jsonl")
    assert stats[0] == {"t": stats[0]["t"], "target": "fortio-server-l2-0", "counters": {},
                        "gauges": {}, "histograms": {}}
    assert lines(sampler.dir / "accesslog.jsonl") == []
    summary = sampler.summary()
    assert summary["samples"] == {"envoy_stats": len(stats), "accesslog": 0,
                                  "sockets": len(socks), "conntrack": 0,
                                  "containers": 0,  # this env has no container cgroups
                                  "dns": 0}  # nor a cluster DNS
    assert summary["gaps"]["conntrack"] == len(gaps) and summary["gaps"]["sockets"] == 0
    # every tick either read a target or skipped it because its last read was still running
    assert summary["skipped"]["envoy_stats"] >= 3 and summary["skipped"]["sockets"] == 0
    assert len(stats) + summary["skipped"]["envoy_stats"] == summary["ticks"] == len(socks)
    assert summary["ended_epoch_s"] >= summary["started_epoch_s"]
    assert summary["files"] == {s: f"series/{s}.jsonl" for s in SERIES}
    sampler.stop()  # idempotent
    assert sampler.summary()["samples"] == summary["samples"]


def test_final_sample_on_stop_and_lines_flushed_while_running(tmp_path: Path):
    ok = Counting("netshoot-0")
    sampler = Sampler(None, tmp_path, interval_s=3600, targets=[ok]).start()
    wait_until(lambda: lines(sampler.dir / "sockets.jsonl"), timeout_s=10,
               what="the first tick's line on disk while the file is open")
    sampler.stop()
    assert [s["n"] for s in lines(sampler.dir / "sockets.jsonl")] == [1, 2]  # + the final one
    assert sampler.summary()["ticks"] == 2


@pytest.mark.parametrize("interval_s", [0, -1.0, True, "1", float("nan"), float("inf")])
def test_interval_must_be_positive(tmp_path: Path, interval_s):
    with pytest.raises(ConfigError, match="Sampler.interval_s"):
        Sampler(None, tmp_path, interval_s=interval_s, targets=[])
