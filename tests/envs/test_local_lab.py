"""The local lab for real: up, traffic through both sidecars, down, and crash clean-up."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshlab.envs.local.lab import DEFAULT_MANIFESTS
from meshlab.envs.local.state import LabState

pytestmark = pytest.mark.lab
LAB = "itest"
L2_CLUSTER = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"


@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab(LAB, manifests=DEFAULT_MANIFESTS) as env:
        yield env


def test_echo_reaches_l2_through_both_sidecars(lab, host_snapshot):
    """The issue's curl: netshoot → fortio-server:8070 → L2, one request id on both hops."""
    res = lab.pod_shell("netshoot").run(
        ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
         "http://fortio-server:8070/echo?size=100"])
    assert res.stdout == "200 100"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # access logs are written after the response
        l1 = [json.loads(x) for x in lab.access_log_lines("fortio-server-0")]
        l2 = [json.loads(x) for x in lab.access_log_lines("fortio-server-l2-0")]
        out = [r for r in l1 if r["upstream_cluster"] == L2_CLUSTER]
        inb = [r for r in l2 if r["upstream_cluster"] == "inbound|8080||"]
        if out and inb:
            break
        time.sleep(0.05)
    assert out and inb
    assert out[-1]["request_id"] == inb[-1]["request_id"] != "-"
    assert out[-1]["response_flags"] == "-" and inb[-1]["response_code"] == 200
    assert any(r["upstream_cluster"] == "inbound|8070||" for r in l1)


def test_service_nat_and_admin(lab):
    """netshoot (no sidecar) reaches L2's ClusterIP via kube-proxy DNAT; the sidecar admin
    answers /ready and counts the request in /stats."""
    svc_ip = lab.describe()["topology"]["services"][0]["cluster_ip"]
    res = lab.pod_shell("netshoot").run(
        ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
         f"http://{svc_ip}:8080/echo"])
    assert res.stdout == "200"
    assert lab.sidecar_admin("fortio-server-l2-0", "/ready").strip() == "LIVE"
    stats = lab.sidecar_admin("fortio-server-l2-0", "/stats")
    assert "cluster.inbound|8080||" in stats


def test_status_lists_lab(lab):
    st = lab.status()
    # cluster, 2 nodes, 3 pods and the cluster DNS host (meshlab.envs.local.kube_dns)
    assert st["status"] == "up" and len(st["netns"]) == 7
    assert all(name.startswith(f"ml-{LAB}-") for name in st["netns"])


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("when", ["during-build", "after-up"])
def test_kill9_then_down_leaves_nothing(tmp_path, host_snapshot, lab_leftovers, when):
    """A runner killed with SIGKILL (mid-build or with the lab up): ``meshlab down`` cleans."""
    lab = "k9"
    code = ("import time; from meshlab.envs.local.lab import LocalEnv; "
            f"e = LocalEnv(lab={lab!r}); e.up(); print('UP', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        if when == "during-build":
            assert _wait_for(lambda: (s := LabState.load(lab)) is not None and len(s.netns) >= 3,
                             20)
        else:
            assert proc.stdout.readline().strip() == "UP"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert lab_leftovers(lab)
    res = subprocess.run([sys.executable, "-m", "meshlab", "down", "--lab", lab],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert lab_leftovers(lab) == {}
    assert not Path(f"/run/meshlab/{lab}").exists()


def test_broken_manifest_builds_nothing(tmp_path, lab_leftovers):
    """``meshlab up`` on a manifest with an unknown kind: one-line error, exit 2, no netns."""
    folder = tmp_path / "m"
    folder.mkdir()
    for f in DEFAULT_MANIFESTS.iterdir():
        (folder / f.name).write_text(f.read_text())
    (folder / "zz.yaml").write_text("apiVersion: v1\nkind: Frobnicator\nmetadata:\n  name: x\n")
    res = subprocess.run([sys.executable, "-m", "meshlab", "up", "--lab", "bad",
                          "--manifests", str(folder)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder / "zz.yaml") in lines[0] and "Frobnicator" in lines[0]
    assert lab_leftovers("bad") == {}


# pytest with Python's Ctrl-C handler: a runner started in the background by a non-interactive
# shell (``nohup … &``, some CI jobs) inherits SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler; the suite's runner gets the handler a terminal's Ctrl-C would find.
_PYTEST_WITH_CTRL_C = ("import signal, sys, pytest; "
                       "signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "sys.exit(pytest.main(sys.argv[1:]))")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_suite_tears_down_and_keeps_partial_results(tmp_path, lab_leftovers, sig):
    """Ctrl-C (or SIGTERM) in the middle of a suite: the lab is torn down and the run still
    leaves its results.json and report."""
    lab = "sig"
    reports = tmp_path / "reports"
    suite = Path(__file__).resolve().parents[2] / "suites" / "test_baseline.py"
    proc = subprocess.Popen([sys.executable, "-c", _PYTEST_WITH_CTRL_C, "-q", str(suite), "-p",
                             "no:cacheprovider", f"--meshlab-lab={lab}",
                             f"--meshlab-reports={reports}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(lambda: list(reports.glob("*/load-*.json.stderr"))
                         or list(reports.glob("*/load-*.json")), 40)
    finally:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    assert lab_leftovers(lab) == {}, out
    runs = list(reports.glob("*/results.json"))
    assert runs, out
    journal = json.loads(runs[0].read_text())
    assert journal["status"] in ("error", "failed") and (runs[0].parent / "report.html").exists()
