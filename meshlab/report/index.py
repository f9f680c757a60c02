"""Render ``reports/index.html``: every run under a reports folder, newest first, and the
trend of each run name across runs (nightly history, :mod:`meshlab.report.trends`).

The index reads each ``<run>/results.json`` for its name, status, start time, TPS and p99; a
run whose journal is unreadable is still listed (as "unreadable", with the reason) so one
broken run never hides the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshlab import __version__
from meshlab.errors import ConfigError
from meshlab.report.journal import load_journal
from meshlab.report.render import JOURNAL_NAME, REPORT_NAME, mark_svg, template_env
from meshlab.report.trends import run_numbers, trend_rows

#: The index file written into the reports folder.
INDEX_NAME = "index.html"


@dataclass(frozen=True)
class RunEntry:
    """One row of the index.

    Attributes:
        run_id: the run directory's name (or the journal's ``run_id``).
        name: the run's name (suite node id), or the run id.
        status: ``passed|failed|error|skipped|running``, ``partial`` or ``unreadable``.
        started_at: ISO start time, or "" when unknown.
        href: link to the report (or to the journal when no report was rendered), relative to
            the index.
        problem: why the journal could not be read, else "".
        tps: requests/s over the run's loads (None: no load).
        p99_us: p99 latency over the run's loads in µs (None: no latency).
    """

    run_id: str
    name: str
    status: str
    started_at: str
    href: str
    problem: str = ""
    tps: float | None = None
    p99_us: float | None = None

    @property
    def tps_text(self) -> str:
        """TPS for display ("–" when unknown)."""
        return "–" if self.tps is None else f"{self.tps:,.1f}"

    @property
    def p99_text(self) -> str:
        """p99 in ms for display ("–" when unknown)."""
        return "–" if self.p99_us is None else f"{self.p99_us / 1000:,.3f}"


def read_entry(run_dir: Path) -> RunEntry:
    """Summarise one run directory for the index."""
    href = f"{run_dir.name}/{REPORT_NAME if (run_dir / REPORT_NAME).exists() else JOURNAL_NAME}"
    try:
        journal = load_journal(run_dir / JOURNAL_NAME)
    except ConfigError as err:
        return RunEntry(run_dir.name, run_dir.name, "unreadable", "", href, str(err))
    status = "partial" if journal.get("partial") and journal["status"] != "running" \
        else journal["status"]
    tps, p99_us = run_numbers(journal)
    return RunEntry(journal["run_id"], journal.get("name") or journal["run_id"], status,
                    journal.get("started_at") or "", href, tps=tps, p99_us=p99_us)


def render_index(reports_dir: Path) -> Path:
    """Write ``reports_dir/index.html`` listing every run directory, newest first.

    A run directory is a sub-folder holding ``results.json``. Runs are ordered by
    ``started_at``, then by run id (run ids start with a timestamp); runs without a readable
    start time come last.

    Args:
        reports_dir: the reports folder, e.g. ``reports/``.

    Returns:
        The path of the written index.
    """
    reports_dir = Path(reports_dir)
    runs = [read_entry(d) for d in reports_dir.iterdir()
            if d.is_dir() and (d / JOURNAL_NAME).is_file()] if reports_dir.is_dir() else []
    runs.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)
    trends = mark_svg(trend_rows(runs))
    html = template_env().get_template("index.html.j2").render(runs=runs, trends=trends,
                                                               version=__version__)
    reports_dir.mkdir(parents=True, exist_ok=True)
    out = reports_dir / INDEX_NAME
    out.write_text(html, encoding="utf-8")
    return out
