"""Render a run's ``report.html`` from its journal (``results.json``) alone.

The report is one self-contained file: inline CSS, charts as inline SVG, no scripts, fonts,
images or any other network resource, so it opens offline and can be attached to a review.
Jinja2 autoescaping is on for every template (journal strings come from users and the mesh);
only chart SVG, which :mod:`meshlab.report.charts` escapes itself, is marked safe.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from meshlab import __version__
from meshlab.report.journal import load_journal
from meshlab.report.view import build_view

#: The journal file a run directory holds (CONTRACTS.md §3).
JOURNAL_NAME = "results.json"
#: The report file written next to it.
REPORT_NAME = "report.html"


@cache
def template_env() -> Environment:
    """The Jinja2 environment for the report templates (autoescape on, strict undefined)."""
    return Environment(loader=PackageLoader("meshlab.report", "templates"), autoescape=True,
                       undefined=StrictUndefined, keep_trailing_newline=True)


def render_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/results.json``.

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
    view = build_view(journal)
    for chart in view["charts"] or []:
        # Chart SVG is built from escaped text in charts.py; mark it safe for the template.
        chart["tps_svg"] = Markup(chart["tps_svg"])
        chart["latency_svg"] = Markup(chart["latency_svg"])
    html = template_env().get_template("report.html.j2").render(version=__version__, **view)
    out = run_dir / REPORT_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
