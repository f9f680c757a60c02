"""The pytest plugin, tested with pytester: options, journaling of a failing test, kube
refusal. The env is replaced through the documented override fixture (``meshlab_env``) with a
minimal in-memory env, since what is tested is the plugin's bookkeeping, not the network."""

import json
from pathlib import Path

CONFTEST = '''
import pytest

class TinyEnv:
    name = "tiny"
    sidecar_has_tcp_stats = True
    def describe(self):
        return {"env": {"name": "tiny"}, "topology": {"nodes": [], "pods": [], "services": []}}
    def pods(self):
        return []
    def access_log_lines(self, pod):
        return []

@pytest.fixture(scope="session")
def meshlab_env():
    return TinyEnv()
'''


def test_failing_test_still_writes_journal_and_report(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_x='''
from meshlab.checks import TpsAtLeast

def test_fails(meshlab_run):
    meshlab_run.journal.add_load("l", {"requests": 10, "errors": 0, "tps": 2.0,
                                       "latency_us": {"p99": 100}, "series": []})
    meshlab_run.check(TpsAtLeast(5, load="l"))

def test_passes(meshlab_run):
    meshlab_run.check()
''')
    result = pytester.runpytest("--meshlab-reports=out", "-p", "no:cacheprovider",
                                "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        # the failure section names the run's report
        "*- meshlab run -*", "report: *out/*test_fails*/report.html",
        "*meshlab runs*", "RESULT*TPS*p99 ms*err %*flags*test*report",
        "FAILED*2.0*0.10*0.00*–*test_x.py::test_fails*report.html",
        "PASSED*–*test_x.py::test_passes*report.html"])
    runs = sorted((pytester.path / "out").glob("*/results.json"))
    assert len(runs) == 2
    by_name = {json.loads(p.read_text())["name"].split("::")[-1]: json.loads(p.read_text())
               for p in runs}
    failed = by_name["test_fails"]
    assert failed["status"] == "failed" and failed["partial"] is False
    assert failed["verdicts"][0]["passed"] is False
    assert all((p.parent / "report.html").exists() for p in runs)
    assert (pytester.path / "out" / "index.html").exists()
    # JUnit XML carries each test's report path as a property
    import xml.etree.ElementTree as ET

    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    props = {name: {p.get("name"): p.get("value") for p in case.iter("property")}
             for name, case in cases.items()}
    assert props["test_fails"]["meshlab_report"].endswith("/report.html")
    assert (pytester.path / props["test_fails"]["meshlab_report"]).is_file()
    assert cases["test_fails"].find("failure") is not None


def test_kube_env_without_a_cluster_errors_with_what_to_set(pytester, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "no-such-kubeconfig"))
    pytester.makepyfile(test_k="def test_k(meshlab_env):\n    pass\n")
    result = pytester.runpytest("--meshlab-env=kube")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kubeconfig: *set kubeconfig*"])


def test_whole_suite_dry_run_on_kube_prints_manifests_and_commands(pytester, monkeypatch):
    """``--meshlab-env=kube --meshlab-dry-run`` over the real baseline suite: every manifest
    and command is printed, nothing needs a cluster, and each test ends as skipped."""
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "no-such-kubeconfig"))
    suite = Path(__file__).resolve().parents[1] / "suites" / "test_baseline.py"
    pytester.makepyfile(test_dry=suite.read_text())
    result = pytester.runpytest("--meshlab-env=kube", "--meshlab-dry-run",
                                "--meshlab-reports=out", "-rs")
    result.assert_outcomes(skipped=2)
    out = result.stdout.str()
    dry = (pytester.path / "out" / "dry-run.txt").read_text()
    assert "meshlab dry run: every manifest and command" in out
    for text in ("kind: Namespace", "kind: StatefulSet", "name: fortio-server-l2",
                 "kind: Service", "kind: Telemetry", "kubectl exec -n meshlab-lab netshoot-0",
                 "kubectl delete namespace meshlab-lab"):
        assert text in dry, f"{text!r} missing from the dry run"
    # the steady-state test runs to its end (checks not evaluated); the request-id one stops
    # where it reads the access log (suites/: tests/kube/test_suite_dry_runs.py)
    assert "dry run: 6 checks not evaluated" in out and "printout in out/dry-run.txt" in out
    assert "dry run: access log of fortio-server-0 not measured" in out
