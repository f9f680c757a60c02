"""Render the report in headless Chromium and check the charts are actually drawn."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshlab.report import render_report
from meshlab.report.charts import FAULT_FILL, PALETTE

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 120


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _count_near(pixels, colour: str, tolerance: int = 24) -> int:
    r0, g0, b0 = _rgb(colour)
    return sum(n for n, (r, g, b) in pixels
               if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance and abs(b - b0) <= tolerance)


def screenshot(report: Path, out_png: Path, profile: Path) -> None:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={out_png}",
            "--window-size=1280,2000", f"file://{report}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False, env={**os.environ, "HOME": str(profile)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s")
    assert out_png.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"


@pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")),
                    reason=f"headless screenshot needs Chromium at {CHROMIUM}, not installed")
def test_screenshot_shows_charts_and_shaded_fault_window(tmp_path, journal, write_run):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot")
    report = render_report(write_run(tmp_path, journal))
    png = tmp_path / "report.png"

    screenshot(report, png, tmp_path / "chromium-profile")

    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    # The time-series section sits below the summary and verdicts; look at its region only.
    charts = image.crop((0, 600, 1280, 2000))
    pixels = charts.getcolors(maxcolors=1 << 20)
    assert pixels is not None
    assert len(pixels) > 50, "chart region looks blank"
    blue, amber, red = PALETTE[0], PALETTE[1], PALETTE[2]
    for name, colour in (("requests/s & p50", blue), ("p90", amber), ("p99 & errors/s", red)):
        assert _count_near(pixels, colour) > 300, f"{name} line ({colour}) not drawn"
    assert _count_near(pixels, FAULT_FILL, tolerance=6) > 20_000, "fault window not shaded"
