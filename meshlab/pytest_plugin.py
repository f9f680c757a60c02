"""pytest plugin (entry point ``pytest11: meshlab``): lab fixtures, run journals, reports.

Shaped like pytest-httpserver: an expensive session-scoped fixture keeps the lab up across
tests (``meshlab_labs``; ``meshlab_env`` gives a test the lab its ``meshlab_lab`` mark asks
for), a cheap per-test fixture gives each test its own journaled run
(``meshlab_run``), and small override fixtures (``meshlab_manifests``, ``meshlab_lab_name``)
let a suite change the defaults. Every test that uses ``meshlab_run`` writes
``<reports>/<run-id>/results.json`` and ``report.html`` — also when it fails or errors — and
the terminal summary lists them.

SIGTERM is turned into KeyboardInterrupt so a killed runner still reverts faults and tears the
lab down; after ``kill -9``, ``meshlab down`` (or the next ``up``) removes the leftovers.

A dry run (``--meshlab-env=kube --meshlab-dry-run``) prints every manifest and command to
``<reports>/dry-run.txt`` and measures nothing: each test's run is in a
:func:`~meshlab.missing.dry_run_scope`, so loads, stats and readings are
:class:`~meshlab.missing.Missing` and checks are not evaluated. A test never passes in a dry
run; it is reported as skipped with what stopped it (:func:`dry_run_skip`): ``dry run: N
checks not evaluated`` when it ran to its end, ``dry run: <what> not measured`` when it needed
the real value of a Missing, ``dry run: assertion on <what> not evaluated`` for an ``assert``
about one, ``dry run: refused on the kube env: …`` for an :class:`~meshlab.errors.Unsupported`.
Anything else (a TypeError, an AttributeError, a LabError, an assertion about real data) is a
failure, as in a real run.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from meshlab.envs.base import Env
from meshlab.errors import MissingMeasurement, SystemUnderTestError, Unsupported
from meshlab.missing import MARK, DryRunScope, dry_run_scope

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.experiment.labs import LabPool
    from meshlab.experiment.run import Run

RUNS_KEY = pytest.StashKey[list]()
REPORT_KEY = pytest.StashKey[dict]()
RUN_REPORT_KEY = pytest.StashKey[Path]()
DRY_RUN_KEY = pytest.StashKey[Path]()
SCOPE_KEY = pytest.StashKey[DryRunScope]()
_MISSING = re.compile(re.escape(MARK) + r"(.*?)>")
#: ``--meshlab-load-mode`` values and the :class:`~meshlab.load.spec.LoadSpec` mode of each.
LOAD_MODES = {"locust": "closed-loop", "open-loop": "open-loop"}


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
    group.addoption("--meshlab-interval", default=1.0, type=float,
                    help="collectors' sampling interval in seconds: sidecar /stats, access "
                         "logs, sockets, conntrack (default 1.0; 0 turns them off)")
    group.addoption("--meshlab-prometheus", default="on", choices=("on", "off"),
                    help="run the lab's Prometheus server and query it at the end of each run "
                         "(default on)")
    group.addoption("--meshlab-kube-config", default=None,
                    help="kube env settings YAML (namespace, allow-list, node opt-in label, "
                         "blast radius, Prometheus URL, SSH; docs/KUBE.md)")
    group.addoption("--meshlab-dry-run", action="store_true",
                    help="kube env: print every manifest and command instead of touching the "
                         "cluster, measure nothing; tests end as skipped 'dry run: …' (or fail "
                         "on a genuine error)")
    group.addoption("--meshlab-load-mode", default="locust", choices=tuple(LOAD_MODES),
                    help="mode of the loads a suite does not give a mode: locust (closed "
                         "loop, default) or open-loop (constant rate, latency corrected for "
                         "coordinated omission; a load without a rate stays closed-loop)")
    group.addoption("--meshlab-keep-lab", action="store_true",
                    help="leave the lab up after the session (meshlab down removes it)")


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Install the SIGTERM handler, the run list and the ``meshlab_lab`` marker."""
    config.stash[RUNS_KEY] = []
    interval_s = config.getoption("--meshlab-interval", 1.0)
    if interval_s is not None and interval_s < 0:
        raise pytest.UsageError(f"--meshlab-interval: must be >= 0 seconds, got {interval_s}")
    if config.getoption("--meshlab-env", "local") != "kube" and (
            config.getoption("--meshlab-dry-run", False)
            or config.getoption("--meshlab-kube-config", None)):
        raise pytest.UsageError("--meshlab-dry-run/--meshlab-kube-config: only with "
                                "--meshlab-env=kube (the local lab has no dry run)")
    config.addinivalue_line("markers", "meshlab_lab(overlays=[...]): run on the base lab plus "
                            "these manifests/overlays/<name> folders")
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _sigterm)


def _lab_key(item: pytest.Item) -> tuple[str, ...]:
    mark = item.get_closest_marker("meshlab_lab")
    return tuple(mark.kwargs.get("overlays", ())) if mark else ()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run the suite tests that share a lab one after another: the tests that use
    ``meshlab_run``/``meshlab_env`` move after the others, grouped by the lab their
    ``meshlab_lab`` mark asks for (base lab first, then by overlays) and otherwise in collection
    order (a stable sort). A lab is built once per group, and each later run of the group gets
    fresh pods (:class:`~meshlab.experiment.labs.LabPool`); every test still gets its own run
    and its own leftover check."""
    def uses_lab(item: pytest.Item) -> bool:
        return bool({"meshlab_run", "meshlab_env"} & set(getattr(item, "fixturenames", ())))

    first = sorted({_lab_key(i) for i in items if uses_lab(i)}, key=lambda k: (len(k), k))
    order = {key: n for n, key in enumerate(first)}
    items[:] = sorted(items, key=lambda i: (1, order[_lab_key(i)]) if uses_lab(i) else (0, 0))


def dry_run_skip(item: pytest.Item, call: pytest.CallInfo[None]) -> str | None:
    """Why a dry-run test's body is reported as skipped, or None when its failure stands (see
    the module docstring).

    Args:
        item: the test, run in a dry-run scope (``meshlab_run``).
        call: its ``call`` phase: passed, or the exception it raised.
    """
    exc = call.excinfo.value if call.excinfo is not None else None
    printout = f"printout in {item.config.stash.get(DRY_RUN_KEY, 'dry-run.txt')}"
    if exc is None:
        run = getattr(item, "funcargs", {}).get("meshlab_run")
        verdicts = run.journal.data.get("verdicts", []) if run is not None else []
        unchecked = sum(1 for v in verdicts if v.get("passed") is None)
        tests = item.stash[SCOPE_KEY].truth_tests
        taken = (f", {_count(tests, 'truth test')} on unmeasured values taken as true"
                 if tests else "")
        return f"dry run: {_count(unchecked, 'check')} not evaluated{taken}; {printout}"
    if isinstance(exc, MissingMeasurement):
        return f"dry run: {exc.what} not measured; {printout}"
    if isinstance(exc, Unsupported):
        return f"dry run: refused on the {item.config.getoption('--meshlab-env')} env: {exc}"
    if isinstance(exc, AssertionError) and not isinstance(exc, SystemUnderTestError):
        found = _MISSING.search(str(exc))
        if found:
            return f"dry run: assertion on {found.group(1)} not evaluated; {printout}"
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so ``meshlab_run`` knows the test's outcome; in a
    dry run, report the test's body as skipped when :func:`dry_run_skip` says why."""
    rep = yield
    if rep.when == "call" and SCOPE_KEY in item.stash and not rep.skipped:
        reason = dry_run_skip(item, call)
        if reason is not None:
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1] or 0, reason)
    item.stash.setdefault(REPORT_KEY, {})[rep.when] = rep
    report = item.stash.get(RUN_REPORT_KEY, None)
    if report is not None and rep.failed:
        journal = report.parent / "results.json"
        rep.sections.append(("meshlab run", f"report: {report}\njournal: {journal}"))
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


def _dry_run_out(config: pytest.Config) -> IO[str] | None:
    """A dry run's printout file (``<reports>/dry-run.txt``, shown in the terminal summary)."""
    if not config.getoption("--meshlab-dry-run", False):
        return None
    reports = Path(config.getoption("--meshlab-reports", "reports"))
    reports.mkdir(parents=True, exist_ok=True)
    config.stash[DRY_RUN_KEY] = reports / "dry-run.txt"
    return (reports / "dry-run.txt").open("w", encoding="utf-8")


@pytest.fixture(scope="session")
def meshlab_labs(pytestconfig: pytest.Config, meshlab_manifests: Path,
                 meshlab_lab_name: str) -> Iterator[LabPool]:
    """The session's :class:`~meshlab.experiment.labs.LabPool` (envs built by
    :func:`~meshlab.envs.factory.build_env` from the ``--meshlab-*`` options); the current lab
    is always torn down at session end (unless ``--meshlab-keep-lab``)."""
    from meshlab.envs.factory import build_env
    from meshlab.experiment.labs import LabPool

    config = pytestconfig
    which = str(config.getoption("--meshlab-env", "local"))
    dry_run = bool(config.getoption("--meshlab-dry-run", False))
    out = _dry_run_out(config)

    def build(key: tuple[Path, ...]) -> Env:
        return build_env(which, key, meshlab_lab_name,
                         kube_config=config.getoption("--meshlab-kube-config", None),
                         dry_run=dry_run, out=out)

    pool = LabPool(build, meshlab_manifests, dry_run=dry_run,
                   prometheus=config.getoption("--meshlab-prometheus", "off") == "on",
                   keep=bool(config.getoption("--meshlab-keep-lab", False)))
    try:
        yield pool
    finally:
        try:
            pool.shutdown()
        finally:
            if out is not None:
                out.close()


@pytest.fixture
def meshlab_env(request: pytest.FixtureRequest, meshlab_labs: LabPool) -> Env:
    """The lab this test asked for (``meshlab_lab`` mark; default: the base lab), up.

    Raises:
        ConfigError: an unsupported env, an unknown overlay or invalid manifests.
        LabError: the lab could not be brought up.
    """
    mark = request.node.get_closest_marker("meshlab_lab")
    overlays = tuple(mark.kwargs.get("overlays", ())) if mark else ()
    return meshlab_labs.get(overlays)


@pytest.fixture
def meshlab_run(request: pytest.FixtureRequest, meshlab_env: Env) -> Iterator[Run]:
    """A journaled run for this test; its report is written when the test ends, then the lab
    is checked for leftovers (rule, sysctl, namespace, process, active fault): any fails the
    test at teardown and is listed in the journal's notes. In a dry run (on an env that only
    prints) the run is in a :func:`~meshlab.missing.dry_run_scope`."""
    from meshlab.errors import LabError
    from meshlab.experiment.lifecycle import RunLifecycle, RunOptions
    from meshlab.journal import RunJournal
    from meshlab.report.render import REPORT_NAME

    config = request.config
    journal = RunJournal(Path(config.getoption("--meshlab-reports")), request.node.nodeid)
    report = journal.dir / REPORT_NAME
    request.node.stash[RUN_REPORT_KEY] = report
    request.node.user_properties.append(("meshlab_report", str(report)))  # JUnit XML
    options = RunOptions(interval_s=float(config.getoption("--meshlab-interval")),
                         load_mode=LOAD_MODES[config.getoption("--meshlab-load-mode", "locust")],
                         dry_run=bool(config.getoption("--meshlab-dry-run")))
    pool = request.getfixturevalue("meshlab_labs") if "meshlab_labs" in \
        request.fixturenames else None
    dry = options.dry_run and getattr(meshlab_env, "dry_run", False) is True
    with dry_run_scope() if dry else contextlib.nullcontext() as scope:
        if scope is not None:
            request.node.stash[SCOPE_KEY] = scope
        life = RunLifecycle(meshlab_env, journal, options, pool)
        run = life.open()
        interrupted = True
        try:
            yield run
            interrupted = False
        finally:
            call = request.node.stash.get(REPORT_KEY, {}).get("call")
            if interrupted or call is None:
                status = "error"
            else:
                status = "passed" if call.passed else ("skipped" if call.skipped else "failed")
            end = life.close(status)
            config.stash[RUNS_KEY].append((request.node.nodeid, end.status, end.report))
    if end.leftovers:
        raise LabError("the run left state behind in the lab:\n  " + "\n  ".join(end.leftovers))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    """A table of the session's runs: outcome, TPS, p99, error %, response flags, report."""
    dry_run = config.stash.get(DRY_RUN_KEY, None)
    if dry_run is not None and dry_run.is_file():
        terminalreporter.section("meshlab dry run: every manifest and command (nothing sent)")
        terminalreporter.write(dry_run.read_text(encoding="utf-8"))
        terminalreporter.write_line(f"(also in {dry_run})")
    runs = config.stash.get(RUNS_KEY, [])
    if not runs:
        return
    from meshlab.report.index import render_index
    from meshlab.run_summary import summarise, table

    terminalreporter.section("meshlab runs")
    for line in table([summarise(nodeid, status, Path(path)) for nodeid, status, path in runs]):
        terminalreporter.write_line(line)
    index = render_index(Path(runs[0][2]).parent.parent)
    terminalreporter.write_line(f"index: {index}")
