"""Acceptance (issue #5): a report of a real lab run, opened in headless Chromium, draws its
charts and the shaded fault window and makes no network request.

The run is a small real chaos experiment: a bounded 40 req/s load through the layered lab,
packet drop on the L1→L2 hop in the middle, collectors sampling every 0.5 s. The fault is held
until the L1 sidecar has logged a given number of requests under it (polled, not slept).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _browser import count_near, load_page, needs_chromium

from meshlab.experiment import Run
from meshlab.faults.packet_drop import PacketDrop
from meshlab.journal import RunJournal
from meshlab.polling import wait_until
from meshlab.report.charts import FAULT_FILL, PALETTE

LAB = "rshot"
L1, L2 = "fortio-server-0", "fortio-server-l2-0"
URL = "http://fortio-server:8070/echo?size=2048"
RATE_PER_S = 40
#: requests (2 L1 records each) logged before, during and after the fault
PHASE_REQUESTS = 60

pytestmark = [pytest.mark.lab, needs_chromium]


def _logged(run: Run, count: int) -> None:
    wait_until(lambda: len(run.records(L1)), lambda n: n >= count, timeout_s=60,
               every_s=0.1, what=f"{L1} access-log records >= {count}")


@pytest.fixture(scope="module")
def real_report(tmp_path_factory, running_lab) -> Path:
    reports = tmp_path_factory.mktemp("reports")
    with running_lab(LAB) as env:
        run = Run(env, RunJournal(reports, "acceptance::packet-drop-under-load"))
        run.start_collectors(interval_s=0.5)
        with run.background_load("under-drop", URL, users=4, rate_per_s=RATE_PER_S,
                                 duration_s=60, timeout_s=5) as load:
            _logged(run, 2 * PHASE_REQUESTS)
            with run.fault(PacketDrop(target=L1, peer_pod=L2, probability=0.3),
                           max_duration_s=60):
                _logged(run, 4 * PHASE_REQUESTS)
            _logged(run, 6 * PHASE_REQUESTS)
            load.stop()
        run.settle()
        return run.finish("passed")


def test_real_report_draws_charts_and_the_fault_window_offline(real_report, tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow reads the screenshot")
    html = real_report.read_text()
    assert "<svg" in html and "packet-drop" in html

    page = load_page(real_report, tmp_path / "browser", size=(1280, 9000))

    assert page.page_requests == [], f"the report requested {page.page_requests}"
    pixels = Image.open(page.png).convert("RGB").getcolors(maxcolors=1 << 22)
    assert pixels is not None and len(pixels) > 50, "the page looks blank"
    blue, amber, red = PALETTE[0], PALETTE[1], PALETTE[2]
    for name, colour in (("requests/s & p50", blue), ("p90", amber), ("p99 & errors", red)):
        assert count_near(pixels, colour) > 300, f"{name} line ({colour}) not drawn"
    assert count_near(pixels, FAULT_FILL, tolerance=6) > 20_000, "fault window not shaded"


def test_browser_harness_sees_a_page_request(tmp_path):
    """Control: the same harness reports a request when a page makes one (to a TEST-NET-1
    address, from a loopback-only netns, so nothing leaves the machine)."""
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><img src="http://192.0.2.1/pixel.png"></body></html>')
    assert load_page(page, tmp_path / "browser", size=(400, 300)).page_requests == [
        "http://192.0.2.1/pixel.png"]
