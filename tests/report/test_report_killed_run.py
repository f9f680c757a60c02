"""Acceptance (issue #5): a run killed mid-way (``kill -9`` of the whole pytest process group)
still leaves a ``results.json`` and its collector series, from which ``meshlab report``
renders a partial report that says it is partial; ``meshlab down`` then removes the lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshlab.polling import wait_until

LAB = "killrun"
BIN = Path(sys.executable).parent
SUITE = '''
from meshlab.polling import wait_until


def test_long_run(meshlab_run):
    with meshlab_run.background_load("endless", "http://fortio-server:8070/echo", users=2,
                                     rate_per_s=20, duration_s=120, timeout_s=5):
        wait_until(lambda: False, timeout_s=120, what="the runner to be killed")
'''

pytestmark = pytest.mark.lab


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _run_dir(reports: Path) -> Path | None:
    dirs = [d for d in reports.glob("*") if (d / "results.json").is_file()]
    return dirs[0] if dirs else None


def test_killed_run_renders_a_partial_report(tmp_path, lab_leftovers):
    (tmp_path / "test_endless.py").write_text(SUITE)
    reports = tmp_path / "reports"
    runner = subprocess.Popen(
        [str(BIN / "pytest"), "test_endless.py", f"--meshlab-lab={LAB}",
         f"--meshlab-reports={reports}", "--meshlab-interval=0.5", "-p", "no:cacheprovider",
         "-q"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        # killed once the collectors have a few seconds of series on disk
        run_dir = wait_until(lambda: _run_dir(reports), timeout_s=60, what="a run directory")
        wait_until(lambda: _lines(run_dir / "series" / "sockets.jsonl"), lambda n: n >= 20,
                   timeout_s=60, what="20 socket samples")
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)

        journal = json.loads((run_dir / "results.json").read_text())
        assert journal["status"] == "running" and journal["partial"] is True
        assert journal["collectors"]["ended_epoch_s"] is None
        (run_dir / "report.html").unlink(missing_ok=True)

        done = subprocess.run([str(BIN / "meshlab"), "report", str(run_dir)],
                              capture_output=True, text=True, timeout=120, check=False)

        assert done.returncode == 0, done.stderr
        html = (run_dir / "report.html").read_text()
        assert "PARTIAL" in html and 'class="banner partial"' in html
        assert html.count("<svg") >= 2, "the collectors' series were not charted"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=30)
        down = subprocess.run([str(BIN / "meshlab"), "down", "--lab", LAB],
                              capture_output=True, text=True, timeout=120, check=False)
        assert down.returncode == 0, down.stderr
    assert lab_leftovers(LAB) == {}
