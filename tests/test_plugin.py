"""The pytest plugin, tested with pytester: options, journaling of a failing test, kube
refusal. The env is replaced through the documented override fixture (``meshlab_env``) with a
minimal in-memory env, since what is tested is the plugin's bookkeeping, not the network."""

import json

CONFTEST = '''
import pytest

class TinyEnv:
    name = "tiny"
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
    result = pytester.runpytest("--meshlab-reports=out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*meshlab runs*", "FAILED*test_x.py::test_fails*report.html",
                                 "PASSED*test_x.py::test_passes*report.html"])
    runs = sorted((pytester.path / "out").glob("*/results.json"))
    assert len(runs) == 2
    by_name = {json.loads(p.read_text())["name"].split("::")[-1]: json.loads(p.read_text())
               for p in runs}
    failed = by_name["test_fails"]
    assert failed["status"] == "failed" and failed["partial"] is False
    assert failed["verdicts"][0]["passed"] is False
    assert all((p.parent / "report.html").exists() for p in runs)
    assert (pytester.path / "out" / "index.html").exists()


def test_kube_env_is_refused_with_a_reason(pytester):
    pytester.makepyfile(test_k="def test_k(meshlab_env):\n    pass\n")
    result = pytester.runpytest("--meshlab-env=kube")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kube env is not in this version yet*"])
