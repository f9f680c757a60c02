"""``meshlab load``: one bounded open-loop load from the client pod of a lab brought up with
``meshlab up``, its numbers printed as JSON and a run report written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LAB = "cliload"
MESHLAB = str(Path(sys.executable).parent / "meshlab")

pytestmark = pytest.mark.lab


def _meshlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHLAB, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_meshlab_load_prints_corrected_and_uncorrected_latency(tmp_path, lab_leftovers):
    assert _meshlab("up", "--lab", LAB).returncode == 0
    try:
        done = _meshlab("load", "http://fortio-server:8070/echo", "--lab", LAB, "--rate", "100",
                        "--duration-s", "2", "--reports", str(tmp_path))
    finally:
        assert _meshlab("down", "--lab", LAB).returncode == 0
    assert lab_leftovers(LAB) == {}
    assert done.returncode == 0, done.stderr
    text, _, report = done.stdout.rpartition("report: ")
    out = json.loads(text)
    assert out["mode"] == "open-loop" and out["errors"] == 0 and out["skipped"] == 0
    assert out["requests"] == 200 and out["tps"] == pytest.approx(100, rel=0.02)
    assert out["latency_ms"]["p50"] >= out["latency_uncorrected_ms"]["p50"] > 0
    assert Path(report.strip()).is_file()
