"""Render a synthetic report in headless Chromium and check the charts are actually drawn
(the real-run acceptance test is test_report_browser_real_run.py)."""

from __future__ import annotations

import pytest
from _browser import count_near, load_page, needs_chromium

from meshlab.report import render_report
from meshlab.report.charts import FAULT_FILL, PALETTE


@needs_chromium
def test_screenshot_shows_charts_and_shaded_fault_window(tmp_path, journal, write_run):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot")
    report = render_report(write_run(tmp_path, journal))

    page = load_page(report, tmp_path / "browser")

    assert page.page_requests == []
    image = Image.open(page.png).convert("RGB")
    assert image.size == (1280, 2000)
    # The time-series section sits below the summary and verdicts; look at its region only.
    pixels = image.crop((0, 600, 1280, 2000)).getcolors(maxcolors=1 << 20)
    assert pixels is not None
    assert len(pixels) > 50, "chart region looks blank"
    blue, amber, red = PALETTE[0], PALETTE[1], PALETTE[2]
    for name, colour in (("requests/s & p50", blue), ("p90", amber), ("p99 & errors/s", red)):
        assert count_near(pixels, colour) > 300, f"{name} line ({colour}) not drawn"
    assert count_near(pixels, FAULT_FILL, tolerance=6) > 20_000, "fault window not shaded"
