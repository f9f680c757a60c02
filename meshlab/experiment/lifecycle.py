"""One run's lifecycle, the same for every front end.

open (journal, :class:`~meshlab.experiment.run.Run`) → start collectors → *the body* (a test,
a ``meshlab load``, a chaostoolkit experiment) → settle → query Prometheus → stop collectors →
leftover check → finish (``results.json`` closed, ``report.html`` rendered).

The pytest plugin, ``meshlab load`` and the chaostoolkit session all run it through
:class:`RunLifecycle` (or :func:`experiment` for a body that is one block), so a run's
journal, notes and report mean the same thing whichever front end made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from meshlab.envs.base import Env
from meshlab.errors import MeshlabError, SystemUnderTestError
from meshlab.experiment.labs import LabPool
from meshlab.experiment.run import DEFAULT_CLIENT, Run
from meshlab.journal import FINAL_STATUSES, RunJournal

#: A run's final status in its journal and report (the journal's own list).
STATUSES = FINAL_STATUSES


@dataclass(frozen=True)
class RunOptions:
    """How a run is instrumented.

    Attributes:
        interval_s: the collectors' sampling interval in seconds (sidecar ``/stats``, access
            logs, sockets, conntrack); 0 turns them off.
        load_mode: the mode of loads that do not name one (``closed-loop`` or ``open-loop``).
        client: the pod loads run from by default.
        dry_run: the env only prints (kube dry run): no collectors, no settle.
    """

    interval_s: float = 0.0
    load_mode: str = "closed-loop"
    client: str = DEFAULT_CLIENT
    dry_run: bool = False


@dataclass
class RunEnd:
    """How a run ended.

    Attributes:
        status: one of :data:`STATUSES` (``error`` when it left state behind).
        report: the ``report.html`` path.
        leftovers: what the run left in the lab (rules, sysctls, namespaces, processes,
            active faults), one line each; empty when clean.
    """

    status: str
    report: Path
    leftovers: list[str] = field(default_factory=list)


class RunLifecycle:
    """One run on ``env`` (see the module docstring): :meth:`open`, the body, :meth:`close`.

    Args:
        env: the env, up.
        journal: the run's journal.
        options: how the run is instrumented.
        pool: the :class:`LabPool` ``env`` came from, if any: it says whether Prometheus is
            queried and holds the fingerprint the leftover check compares against; a run
            that left state behind has its lab torn down so the next run gets a clean one.
    """

    def __init__(self, env: Env, journal: RunJournal, options: RunOptions | None = None,
                 pool: LabPool | None = None) -> None:
        self.env = env
        self.journal = journal
        self.options = options or RunOptions()
        self.pool = pool
        self.run: Run | None = None

    def __repr__(self) -> str:
        return f"RunLifecycle(env={self.env.name!r}, journal={self.journal!r})"

    @property
    def _instrumented(self) -> bool:
        # a partial stand-in for an env (a unit test's) gets no collectors and no settle
        return isinstance(self.env, Env) and not self.options.dry_run

    def open(self) -> Run:
        """Create the run (its journal records the env) and start the collectors.

        Raises:
            ConfigError: a bad option (``load_mode``, ``interval_s``).
        """
        opts = self.options
        self.run = Run(self.env, self.journal, client=opts.client, load_mode=opts.load_mode)
        if opts.interval_s > 0 and self._instrumented:
            self.run.start_collectors(interval_s=opts.interval_s)
        return self.run

    def close(self, status: str) -> RunEnd:
        """Settle, query Prometheus, stop the collectors, check for leftovers, finish.

        Never raises for what it measures: a Prometheus that cannot be queried or a run that
        left state behind is a journal note (and, for leftovers, status ``error``).

        Args:
            status: the body's outcome, one of :data:`STATUSES`.
        """
        run = self.run
        if run is None:
            raise RuntimeError("RunLifecycle.close before open")
        if self._instrumented:
            run.settle()
        if self.pool is not None and self.pool.queries_prometheus(self.env):
            try:
                run.query_prometheus()
            except MeshlabError as exc:
                self.journal.data["notes"].append(f"Prometheus not queried: {exc}")
        run.stop_collectors()  # its reads (ss, conntrack) must not count as leftovers
        left = self.pool.leftovers(self.env) if self.pool is not None else []
        if left:
            self.journal.data["notes"] += [f"left behind: {line}" for line in left]
            status = "error"
            self.pool.close(keep=False)  # the next run gets a clean lab
        return RunEnd(status, run.finish(status), left)


@contextmanager
def experiment(env: Env, journal: RunJournal, options: RunOptions | None = None,
               pool: LabPool | None = None) -> Iterator[Run]:
    """A run whose body is the ``with`` block: ``passed`` when it ends normally, ``failed``
    when a check failed (:class:`~meshlab.errors.SystemUnderTestError`), else ``error``; the
    run is always finished and its report written, and the exception re-raised."""
    life = RunLifecycle(env, journal, options, pool)
    run = life.open()
    status = "error"
    try:
        yield run
        status = "passed"
    except SystemUnderTestError:
        status = "failed"
        raise
    finally:
        life.close(status)
