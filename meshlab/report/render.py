"""Render a run's ``report.html`` from its journal (``results.json``) and raw series files.

The report is one self-contained file: inline CSS, charts as inline SVG, no scripts, fonts,
images or any other network resource, so it opens offline and can be attached to a review.
Jinja2 autoescaping is on for every template (journal strings come from users and the mesh);
only chart SVG, which :mod:`meshlab.report.charts` escapes itself, is marked safe. Rendering
also writes the run's Service Mesh Performance export, ``smp.json`` (:mod:`meshlab.report.smp`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from meshlab import __version__
from meshlab.report.journal import load_journal
from meshlab.report.smp import write_smp
from meshlab.report.view import build_view

#: The journal file a run directory holds (CONTRACTS.md §3).
JOURNAL_NAME = "results.json"
#: The report file written next to it.
REPORT_NAME = "report.html"
#: View keys holding chart SVG (built by meshlab.report.charts).
_SVG_KEYS = frozenset({"svg", "tps_svg", "latency_svg", "p99_svg"})


@cache
def template_env() -> Environment:
    """The Jinja2 environment for the report templates (autoescape on, strict undefined)."""
    return Environment(loader=PackageLoader("meshlab.report", "templates"), autoescape=True,
                       undefined=StrictUndefined, keep_trailing_newline=True)


def mark_svg(value: Any) -> Any:
    """Mark the view's chart SVG strings safe (charts.py escapes every text in them)."""
    if isinstance(value, dict):
        return {k: Markup(v) if k in _SVG_KEYS and isinstance(v, str) else mark_svg(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mark_svg(item) for item in value]
    return value


def render_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (and ``run_dir/smp.json``) from ``run_dir/results.json``
    and the collector series it lists.

    Args:
        run_dir: a run directory, e.g. ``reports/20261121-150102-test_baseline``.

    Returns:
        The path of the written report.

    Raises:
        ConfigError: ``results.json`` is missing, not JSON or malformed; the message names the
            file and the offending field.
    """
    run_dir = Path(run_dir)
    journal = load_journal(run_dir / JOURNAL_NAME)
    write_smp(run_dir, journal)
    view = mark_svg(build_view(journal, run_dir))
    html = template_env().get_template("report.html.j2").render(version=__version__, **view)
    out = run_dir / REPORT_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
