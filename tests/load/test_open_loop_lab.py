"""Open loop through the real lab (lab ``olp``): a run whose default load mode is open loop
drives the client pod → L1 sidecar path at a constant rate, every request reaches L1's sidecar,
the journal keeps the open-loop keys, and the report labels the mode and shows the uncorrected
percentiles beside the corrected ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from meshlab.experiment import Run
from meshlab.journal import RunJournal
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
URL = "http://fortio-server:8070/echo?size=100"  # L1, fortio-server-0, through its sidecar


@pytest.fixture(scope="module")
def new_run(running_lab, tmp_path_factory) -> Iterator[Callable[..., Run]]:
    """``new_run(name, **run_kwargs)``: a journaled run from netshoot-0 on lab ``olp``."""
    with running_lab("olp") as env:
        yield lambda name, **kw: Run(env, RunJournal(tmp_path_factory.mktemp(name), name),
                                     client="netshoot-0", **kw)


def l1_inbound(run: Run) -> int:
    """Requests L1's sidecar logged on its inbound listener during ``run``."""
    return sum(str(r.get("upstream_cluster", "")).startswith("inbound")
               for r in run.records("fortio-server-0"))


def test_open_loop_run_is_journaled_and_labelled_in_the_report(new_run) -> None:
    run = new_run("olp-open-loop", load_mode="open-loop")
    result = run.load("ol", URL, users=4, rate_per_s=200, duration_s=3, timeout_s=5)
    assert (result.tool, result.mode, result.connections) == ("meshlab", "open-loop", 4)
    assert result.requests + result.skipped == 600 and result.errors == 0
    assert result.latency_us["p50"] >= result.latency_uncorrected_us["p50"] > 0
    closed = run.load("unthrottled", URL, users=2, duration_s=2, max_requests=50, timeout_s=5)
    assert closed.mode == "closed-loop" and closed.late is None  # no rate: stays closed loop
    sent = result.requests + closed.requests  # every request sent reaches L1's sidecar
    assert wait_until(lambda: l1_inbound(run), lambda n: n >= sent, timeout_s=15,
                      what="L1 inbound records") == sent
    report = run.finish("passed")
    journal = json.loads((run.journal.dir / "results.json").read_text())
    ol = journal["loads"][0]
    assert ol["mode"] == "open-loop" and ol["late_threshold_us"] == 1000
    assert {"hdr_uncorrected", "late", "skipped"} <= set(ol)
    assert "late" not in journal["loads"][1]
    html = report.read_text()
    assert "meshlab open-loop" in html and "locust closed-loop" in html
    assert html.count("unc. ") == 5  # p50, p90, p99, p99.9, max of the one open-loop load


def test_open_loop_background_load_stops_with_a_partial_result(new_run) -> None:
    run = new_run("olp-background")
    with run.background_load("bg", URL, users=2, rate_per_s=100, duration_s=60, timeout_s=5,
                             mode="open-loop", distribution="poisson") as handle:
        wait_until(lambda: l1_inbound(run), lambda n: n >= 50, timeout_s=20,
                   what="load flowing through L1")
        result = handle.stop()
    assert result.mode == "open-loop" and result.distribution == "poisson"
    assert result.elapsed_s < 30 and result.requests >= 50
    assert run.journal.data["loads"][-1]["mode"] == "open-loop"
