"""pytest plugin (entry point ``pytest11: meshlab``): lab fixtures, run journals, reports.

Shaped like pytest-httpserver: an expensive session-scoped fixture brings the lab up once
(``meshlab_env``), a cheap per-test fixture gives each test its own journaled run
(``meshlab_run``), and small override fixtures (``meshlab_manifests``, ``meshlab_lab_name``)
let a suite change the defaults. Every test that uses ``meshlab_run`` writes
``<reports>/<run-id>/results.json`` and ``report.html`` — also when it fails or errors — and
the terminal summary lists them.

SIGTERM is turned into KeyboardInterrupt so a killed runner still reverts faults and tears the
lab down; after ``kill -9``, ``meshlab down`` (or the next ``up``) removes the leftovers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlab.errors import ConfigError

RUNS_KEY = pytest.StashKey[list]()
REPORT_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--meshlab-*`` options."""
    group = parser.getgroup("meshlab", "meshlab chaos lab")
    group.addoption("--meshlab-env", default="local", choices=("local", "kube"),
                    help="where the lab runs (default: local network namespaces)")
    group.addoption("--meshlab-manifests", default=None,
                    help="manifests folder (default: manifests/fortio-layered)")
    group.addoption("--meshlab-reports", default="reports",
                    help="folder for run reports (default: reports)")
    group.addoption("--meshlab-lab", default="lab", help="local lab name (default: lab)")
    group.addoption("--meshlab-keep-lab", action="store_true",
                    help="leave the lab up after the session (meshlab down removes it)")


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Install the SIGTERM handler and the run list."""
    config.stash[RUNS_KEY] = []
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _sigterm)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so ``meshlab_run`` knows the test's outcome."""
    rep = yield
    item.stash.setdefault(REPORT_KEY, {})[rep.when] = rep
    return rep


@pytest.fixture(scope="session")
def meshlab_manifests(pytestconfig: pytest.Config) -> Path:
    """The manifests folder the lab is built from (override to use another lab)."""
    from meshlab.envs.local.lab import DEFAULT_MANIFESTS

    opt = pytestconfig.getoption("--meshlab-manifests")
    return Path(opt) if opt else DEFAULT_MANIFESTS


@pytest.fixture(scope="session")
def meshlab_lab_name(pytestconfig: pytest.Config) -> str:
    """The local lab's name (its netns are ``ml-<name>-…``)."""
    return str(pytestconfig.getoption("--meshlab-lab"))


@pytest.fixture(scope="session")
def meshlab_env(pytestconfig: pytest.Config, meshlab_manifests: Path,
                meshlab_lab_name: str) -> Iterator[Any]:
    """The lab, up for the whole session and always torn down at its end.

    Raises:
        ConfigError: an unsupported env or invalid manifests (nothing is built).
        LabError: the lab could not be brought up.
    """
    which = pytestconfig.getoption("--meshlab-env")
    if which != "local":
        raise ConfigError("--meshlab-env=kube: the kube env is not in this version yet "
                          "(issue #6); use --meshlab-env=local")
    from meshlab.envs.local.lab import LocalEnv

    env = LocalEnv(meshlab_manifests, lab=meshlab_lab_name)
    env.up()
    try:
        yield env
    finally:
        if not pytestconfig.getoption("--meshlab-keep-lab"):
            env.down()


@pytest.fixture
def meshlab_run(request: pytest.FixtureRequest, meshlab_env: Any) -> Iterator[Any]:
    """A journaled run for this test; its report is written when the test ends."""
    from meshlab.experiment import Run
    from meshlab.journal import RunJournal

    reports = Path(request.config.getoption("--meshlab-reports"))
    journal = RunJournal(reports, request.node.nodeid)
    run = Run(meshlab_env, journal)
    interrupted = True
    try:
        yield run
        interrupted = False
    finally:
        reps = request.node.stash.get(REPORT_KEY, {})
        call = reps.get("call")
        if interrupted or call is None:
            status = "error"
        else:
            status = "passed" if call.passed else ("skipped" if call.skipped else "failed")
        path = run.finish(status)
        request.config.stash[RUNS_KEY].append((request.node.nodeid, status, path))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    """A table of the session's runs with their report paths."""
    runs = config.stash.get(RUNS_KEY, [])
    if not runs:
        return
    from meshlab.report.index import render_index

    terminalreporter.section("meshlab runs")
    width = max(len(n) for n, _, _ in runs)
    for nodeid, status, path in runs:
        terminalreporter.write_line(f"{status.upper():7} {nodeid:<{width}}  {path}")
    index = render_index(Path(runs[0][2]).parent.parent)
    terminalreporter.write_line(f"index: {index}")
