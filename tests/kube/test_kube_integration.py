"""Opt-in: the suites on a real Kubernetes cluster with Istio.

Runs only when ``MESHLAB_KUBE_SETTINGS`` names a kube settings file (docs/KUBE.md) whose
kubeconfig reaches a cluster; otherwise it is skipped with the reason shown in the test
summary (``-rs`` is on in pyproject). The README gives the exact command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = os.environ.get("MESHLAB_KUBE_SETTINGS")
TIMEOUT_S = 3600


@pytest.mark.skipif(not SETTINGS, reason="kube integration run not requested: no cluster is "
                    "configured (set MESHLAB_KUBE_SETTINGS=<kube settings YAML>, see "
                    "docs/KUBE.md)")
def test_suites_pass_on_a_real_cluster(tmp_path):
    settings = Path(SETTINGS or "").expanduser()
    assert settings.is_file(), f"MESHLAB_KUBE_SETTINGS={SETTINGS}: no such file"
    reports = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "suites"), "--meshlab-env=kube",
         f"--meshlab-kube-config={settings}", f"--meshlab-reports={reports}", "-p",
         "no:cacheprovider", "-q"], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert list(reports.glob("*/report.html")), "no run report was written"
