"""Headless Chromium for the report tests: a screenshot plus every network request the page
made, taken from Chromium's own net-log.

Chromium runs inside a private network namespace that has only loopback, so neither the page
nor the browser's own background requests (component updater, time sync) can leave the
machine; the net-log still records every request that was *attempted*, and a request made by
the page is told from the browser's own by its network isolation key (``file://`` for a
report opened from disk).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshlab.envs.local.netns import add_netns, delete_netns

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 120

needs_chromium = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")),
    reason=f"headless screenshot needs Chromium at {CHROMIUM} (scripts/setup.sh installs it)")


@dataclass
class PageLoad:
    """A screenshot (``png``) and the URLs the page itself requested (``page_requests``)."""

    png: Path
    page_requests: list[str]
    all_requests: list[str]


def _requests(netlog: Path) -> tuple[list[str], list[str]]:
    data = json.loads(netlog.read_text())
    names = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    page, every = [], []
    for event in data["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        every.append(params["url"])
        origin = f"{params.get('network_isolation_key', '')} {params.get('site_for_cookies', '')}"
        if "file://" in origin or params.get("initiator") not in (None, "not an origin"):
            page.append(params["url"])
    return page, every


def load_page(page: Path, workdir: Path, size: tuple[int, int] = (1280, 2000)) -> PageLoad:
    """Open ``page`` (a local HTML file) in headless Chromium inside a private loopback-only
    netns, screenshot it and collect the requests from the net-log.

    Raises:
        pytest.fail.Exception: Chromium did not finish or wrote no screenshot.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    png, netlog, profile = workdir / "page.png", workdir / "netlog.json", workdir / "profile"
    netns = f"mlt-browser-{uuid.uuid4().hex[:8]}"
    argv = ["ip", "netns", "exec", netns, CHROMIUM, "--headless", "--no-sandbox",
            "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
            f"--log-net-log={netlog}", f"--screenshot={png}",
            f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()]
    add_netns(netns)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False, env={**os.environ, "HOME": str(profile)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s")
    finally:
        delete_netns(netns)
    assert png.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    assert netlog.is_file(), f"no net-log (exit {proc.returncode}): {proc.stderr[-2000:]}"
    page_requests, every = _requests(netlog)
    return PageLoad(png, page_requests, every)


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#1f77b4"`` -> ``(31, 119, 180)``."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def count_near(pixels: list[tuple[int, tuple[int, int, int]]], colour: str,
               tolerance: int = 24) -> int:
    """How many pixels of ``Image.getcolors()`` output are within ``tolerance`` of ``colour``."""
    r0, g0, b0 = rgb(colour)
    return sum(n for n, (r, g, b) in pixels
               if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance
               and abs(b - b0) <= tolerance)
