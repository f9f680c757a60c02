"""HTML report of a run (``report.html``) and the run index (``reports/index.html``).

Both read only run journals (``results.json``, CONTRACTS.md §3), so a past run can be re-rendered.
"""

from meshlab.report.index import render_index
from meshlab.report.render import render_report

__all__ = ["render_index", "render_report"]
