"""How a dry run (``--meshlab-env=kube --meshlab-dry-run``) reports a suite's tests, on a small
synthetic suite: only a missing measurement (or a refusal) is a skip; a genuine bug fails.

- a test that runs to its end is skipped ``dry run: N checks not evaluated``, its journal has
  the load as ``null`` numbers marked ``not_measured`` and each verdict ``passed: null``, and
  its report says NOT EVALUATED;
- ``int()`` or a format spec of an unmeasured value, and an ``assert`` about one, are skipped
  with what was not measured;
- an AttributeError, a TypeError, a LabError or an assertion about real data fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SUITE = '''
from meshlab import ErrorRateAtMost, LabError, Run, TpsAtLeast

URL = "http://fortio-server:8070/echo"


def test_runs_to_its_end(meshlab_run: Run) -> None:
    result = meshlab_run.load("steady", URL, rate_per_s=10, duration_s=1)
    assert result.tps >= 9
    meshlab_run.observe("ratio", "latency_compare", {"p99_ms": result.latency_us["p99"] / 1000})
    meshlab_run.check(TpsAtLeast(9, load="steady"), ErrorRateAtMost(0.0, load="steady"))


def test_int_of_a_missing_measurement(meshlab_run: Run) -> None:
    result = meshlab_run.load("counted", URL, duration_s=1)
    int(result.requests)


def test_a_format_spec_of_a_missing_measurement(meshlab_run: Run) -> None:
    print(f"{meshlab_run.load('formatted', URL, duration_s=1).tps:.1f} TPS")


def test_an_assertion_about_a_missing_measurement(meshlab_run: Run) -> None:
    assert meshlab_run.load("asserted", URL, duration_s=1).status_counts.get("503") is None


def test_an_attribute_error(meshlab_run: Run) -> None:
    meshlab_run.load("buggy", URL, duration_s=1).p99_ms  # no such attribute: a suite bug


def test_a_type_error(meshlab_run: Run) -> None:
    meshlab_run.names.pod("fortio-server") + 1


def test_an_assertion_about_real_data(meshlab_run: Run) -> None:
    assert meshlab_run.names.pod("fortio-server") == "fortio-server-7"


def test_a_lab_error(meshlab_run: Run) -> None:
    raise LabError("a genuine lab error")
'''
SKIPPED = {
    "test_runs_to_its_end": "dry run: 2 checks not evaluated, 1 truth test on unmeasured values "
                            "taken as true; printout in {dry}",
    "test_int_of_a_missing_measurement": "dry run: load 'counted' requests not measured; "
                                         "printout in {dry}",
    "test_a_format_spec_of_a_missing_measurement": "dry run: load 'formatted' tps not measured; "
                                                   "printout in {dry}",
    "test_an_assertion_about_a_missing_measurement":
        "dry run: assertion on load 'asserted' status_counts[503] not evaluated; printout in {dry}",
}
FAILED = {"test_an_attribute_error": "AttributeError: 'LoadResult' object has no attribute "
                                     "'p99_ms'",
          "test_a_type_error": "TypeError: can only concatenate str",
          "test_an_assertion_about_real_data": "AssertionError: assert 'fortio-server-0' == ",
          "test_a_lab_error": "LabError: a genuine lab error"}


@pytest.fixture
def outcome(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "no-such-kubeconfig"))
    pytester.makepyfile(test_synthetic=SUITE)
    rec = pytester.inline_run("--meshlab-env=kube", "--meshlab-dry-run", "--meshlab-reports=out",
                              "-p", "no:hypothesispytest")
    reports = {r.nodeid.rpartition("::")[2]: r for r in rec.getreports("pytest_runtest_logreport")
               if r.when == "call"}
    return reports, pytester.path / "out"


def test_only_missing_measurements_are_skipped_and_genuine_bugs_fail(outcome):
    reports, _ = outcome
    assert sorted(reports) == sorted({**SKIPPED, **FAILED})
    for name, reason in SKIPPED.items():
        assert reports[name].skipped, (name, reports[name].longreprtext)
        assert reports[name].longrepr[2] == reason.format(dry="out/dry-run.txt")
    for name, error in FAILED.items():
        assert reports[name].failed, (name, reports[name].outcome)
        assert error in reports[name].longreprtext, (name, reports[name].longreprtext)


def test_a_dry_run_journal_and_report_say_not_measured_and_not_evaluated(outcome):
    _, out = outcome
    run = next(p.parent for p in out.glob("*/results.json") if "runs_to_its_end" in p.parent.name)
    journal = json.loads((run / "results.json").read_text())
    assert journal["status"] == "skipped" and journal["env"]["dry_run"] is True
    assert any(n.startswith("dry run: every manifest and command was printed") for n in
               journal["notes"])
    (load,) = journal["loads"]
    assert load["not_measured"] == "dry run: nothing was sent, nothing measured"
    assert (load["target_url"], load["rate_per_s"], load["duration_s"]) == (
        "http://fortio-server:8070/echo", 10.0, 1.0)  # what was planned
    assert all(load[key] is None for key in ("requests", "errors", "tps", "latency_us", "hdr",
                                             "series", "status_counts"))
    assert journal["observations"]["ratio"]["data"] == {"p99_ms": None}
    assert [(v["check"], v["passed"], v["observed"]) for v in journal["verdicts"]] == [
        ("tps_at_least", None, "not measured (dry run)"),
        ("error_rate_at_most", None, "not measured (dry run)")]
    assert journal["verdicts"][0]["message"] == (
        "tps_at_least on 'steady': not evaluated (dry run: nothing was measured), expected "
        ">= 9.0 TPS")
    html = (run / "report.html").read_text()
    assert "DRY RUN — SKIPPED" in html
    assert "0 of 2 checks passed, 2 not evaluated (dry run)" in html
    assert html.count('<span class="badge plain">NOT EVALUATED</span>') == 2
    assert ">PASS<" not in html and ">FAIL<" not in html
    printout = (out / "dry-run.txt").read_text()
    assert "--out /tmp/meshlab-load-steady-" in printout  # the load was printed, not run


def test_the_dry_run_left_no_fault_ledger_and_no_missing_outside_it(outcome):
    from meshlab.envs.ledger import LEDGER_ROOT
    from meshlab.missing import dry_run_active

    assert not dry_run_active()  # the scope closed with the run
    assert not list(Path(LEDGER_ROOT).glob("kube-lab/*.json"))
