"""A load split over two runner processes in the real lab's client pod netns (lab ``dst``):
the requests add up to the spec's bound, the merged histogram is exactly the sum of the two
processes' files, the journal says ``processes: 2``, and L1's sidecar logged every request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _hdr_buckets import buckets

from meshlab.experiment import Run
from meshlab.journal import RunJournal
from meshlab.load import hdr
from meshlab.load.group import LoadGroup, part_path
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "dst"
L1, CLIENT = "fortio-server-0", "netshoot-0"
URL = "http://fortio-server:8070/echo?size=100"


def inbound(run: Run) -> list[dict[str, Any]]:
    """L1 sidecar's inbound access-log records of this run (one per request of the load)."""
    return [r for r in run.records(L1) if str(r.get("upstream_cluster", "")).startswith("inbound")]


def parts_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(part_path(out, i).read_text()) for i in (0, 1)]


@pytest.fixture(scope="module")
def env(running_lab):
    """The lab, up for this module."""
    with running_lab(LAB) as lab:
        yield lab


def test_two_processes_give_the_sum_of_requests_and_an_exact_merge(env, tmp_path: Path):
    run = Run(env, RunJournal(tmp_path, "dst-processes"), client=CLIENT)
    result = run.load("split", URL, users=4, rate_per_s=100, duration_s=10, max_requests=301,
                      timeout_s=5, processes=2)
    a, b = parts_of(run.journal.dir / "load-split.json")
    assert (a["requests"], b["requests"]) == (151, 150)
    assert (a["rate_per_s"], a["users"]) == (b["rate_per_s"], b["users"]) == (50.0, 2)
    assert result.requests == 301 and result.errors == 0 and result.processes == 2
    assert buckets(result.hdr) == buckets(hdr.encode(hdr.merge([a["hdr"], b["hdr"]])))
    for key in ("p50", "p90", "p99", "max"):  # a mixture's quantile lies between the parts'
        low, high = sorted((a["latency_us"][key], b["latency_us"][key]))
        assert low <= result.latency_us[key] <= high, key
    assert sum(p.requests for p in result.series) == 301
    assert result.start_epoch_s == min(a["start_epoch_s"], b["start_epoch_s"])
    assert result.end_epoch_s == max(a["end_epoch_s"], b["end_epoch_s"])
    journal = json.loads((run.journal.dir / "results.json").read_text())
    assert journal["loads"][-1]["name"] == "split" and journal["loads"][-1]["processes"] == 2
    logged = wait_until(lambda: inbound(run), lambda recs: len(recs) >= 301, timeout_s=15,
                        what="L1 inbound records")
    assert len(logged) == 301


def test_a_background_load_over_two_processes_is_stopped_as_one(env, tmp_path: Path):
    run = Run(env, RunJournal(tmp_path, "dst-background"), client=CLIENT)
    with run.background_load("bg", URL, users=2, rate_per_s=60, duration_s=60, timeout_s=5,
                             processes=2) as handle:
        assert isinstance(handle, LoadGroup)
        wait_until(lambda: inbound(run), lambda recs: len(recs) >= 40, timeout_s=20,
                   what="load flowing through L1")
        result = handle.stop()
    assert not handle.running and result.processes == 2 and result.elapsed_s < 30
    a, b = parts_of(run.journal.dir / "load-bg.json")
    assert a["requests"] > 0 and b["requests"] > 0
    assert result.requests == a["requests"] + b["requests"] >= 40
    assert run.journal.data["loads"][-1]["processes"] == 2
