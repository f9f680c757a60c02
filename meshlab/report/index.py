"""Render ``reports/index.html``: every run under a reports folder, newest first.

The index reads each ``<run>/results.json`` only for its name, status and start time; a run
whose journal is unreadable is still listed (as "unreadable", with the reason) so one broken
run never hides the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshlab import __version__
from meshlab.errors import ConfigError
from meshlab.report.journal import load_journal
from meshlab.report.render import JOURNAL_NAME, REPORT_NAME, template_env

#: The index file written into the reports folder.
INDEX_NAME = "index.html"


@dataclass(frozen=True)
class RunEntry:
    """One row of the index.

    Attributes:
        run_id: the run directory's name (or the journal's ``run_id``).
        name: the run's name (suite node id), or the run id.
        status: ``passed|failed|error|running``, ``partial`` or ``unreadable``.
        started_at: ISO start time, or "" when unknown.
        href: link to the report (or to the journal when no report was rendered), relative to
            the index.
        problem: why the journal could not be read, else "".
    """

    run_id: str
    name: str
    status: str
    started_at: str
    href: str
    problem: str = ""


def read_entry(run_dir: Path) -> RunEntry:
    """Summarise one run directory for the index."""
    href = f"{run_dir.name}/{REPORT_NAME if (run_dir / REPORT_NAME).exists() else JOURNAL_NAME}"
    try:
        journal = load_journal(run_dir / JOURNAL_NAME)
    except ConfigError as err:
        return RunEntry(run_dir.name, run_dir.name, "unreadable", "", href, str(err))
    status = "partial" if journal.get("partial") and journal["status"] != "running" \
        else journal["status"]
    return RunEntry(journal["run_id"], journal.get("name") or journal["run_id"], status,
                    journal.get("started_at") or "", href)


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
    html = template_env().get_template("index.html.j2").render(runs=runs, version=__version__)
    reports_dir.mkdir(parents=True, exist_ok=True)
    out = reports_dir / INDEX_NAME
    out.write_text(html, encoding="utf-8")
    return out
