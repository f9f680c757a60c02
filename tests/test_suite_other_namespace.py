"""A suite takes the lab's names from its topology (``Run.names``), not from the book's
namespace: the baseline and response-flag suites pass unchanged on a lab whose manifests put
every workload in namespace ``payments`` instead of ``mark``, and what they asserted on was
that namespace's Envoy clusters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["suites/test_baseline.py", "suites/test_response_flags.py"]
NAMESPACE = "payments"
LAB = "nsx"


def _manifests_in(namespace: str, folder: Path) -> Path:
    """The book's lab with every ``mark`` namespace replaced by ``namespace``."""
    shutil.copytree(DEFAULT_MANIFESTS, folder)
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        path.write_text(text.replace("namespace: mark", f"namespace: {namespace}")
                        .replace("name: mark\n", f"name: {namespace}\n"))
    assert "mark" not in "".join(p.read_text() for p in folder.glob("*.yaml")
                                 ).replace("namespace `mark`", "")
    return folder


def test_suites_pass_on_a_lab_in_another_namespace(tmp_path, lab_leftovers):
    manifests = _manifests_in(NAMESPACE, tmp_path / "manifests")
    reports = tmp_path / "reports"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES,
         f"--meshlab-manifests={manifests}", f"--meshlab-lab={LAB}",
         f"--meshlab-reports={reports}", "--meshlab-prometheus=off", "--meshlab-interval=0"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "4 passed" in res.stdout, res.stdout[-2000:]
    (journal,) = [json.loads(p.read_text()) for p in reports.glob(
        "*test_steady_state_through_both_sidecars/results.json")]
    clusters = set(journal["sidecars"]["fortio-server-0"]["response_flags"])
    assert f"outbound|8080||fortio-server-l2.{NAMESPACE}.svc.cluster.local" in clusters
    assert not any(".mark." in c for c in clusters), clusters
    assert lab_leftovers(LAB) == {}
