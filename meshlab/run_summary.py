"""One line per finished run for the pytest terminal summary (and anything else listing runs).

Reads only the run's ``results.json`` (CONTRACTS.md §3), so it works for runs of any env and
for runs whose report could not be rendered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlab.report.render import JOURNAL_NAME
from meshlab.report.trends import run_numbers


@dataclass(frozen=True)
class RunSummary:
    """What the terminal table shows for one run.

    Attributes:
        nodeid: the pytest node id (the run's name).
        status: ``passed|failed|error|skipped`` (the test's outcome).
        tps: requests/s over the run's loads (all their requests / all their run time), None
            without loads (:func:`meshlab.report.trends.run_numbers`, as the index shows it).
        p99_ms: p99 over all the run's requests (merged histograms) in ms, None without.
        error_pct: errors / requests over all loads in percent, None without requests.
        flags: non-``-`` response flags summed over every sidecar, e.g. ``{"UC": 4}``.
        report: the ``report.html`` path.
    """

    nodeid: str
    status: str
    tps: float | None
    p99_ms: float | None
    error_pct: float | None
    flags: dict[str, int]
    report: Path

    def cells(self) -> list[str]:
        """The table cells: status, TPS, p99 (ms), error %, flags, test, report."""
        def num(value: float | None, fmt: str) -> str:
            return "–" if value is None else format(value, fmt)
        flags = " ".join(f"{k}×{v}" for k, v in sorted(self.flags.items())) or "–"
        return [self.status.upper(), num(self.tps, ".1f"), num(self.p99_ms, ".2f"),
                num(self.error_pct, ".2f"), flags, self.nodeid, str(self.report)]


def summarise(nodeid: str, status: str, report: Path) -> RunSummary:
    """Summarise the run whose report is ``report`` (its journal is next to it).

    A missing or unreadable journal gives a row without numbers; this never raises.
    """
    try:
        journal: dict[str, Any] = json.loads((report.parent / JOURNAL_NAME).read_text())
    except (OSError, ValueError):
        journal = {}
    loads = [load for load in journal.get("loads") or [] if isinstance(load, dict)]
    requests = sum(int(load.get("requests") or 0) for load in loads)
    errors = sum(int(load.get("errors") or 0) for load in loads)
    tps, p99_us = run_numbers({"loads": loads})  # the same numbers as reports/index.html
    flags: dict[str, int] = {}
    for sidecar in (journal.get("sidecars") or {}).values():
        for by_flag in ((sidecar or {}).get("response_flags") or {}).values():
            for flag, count in by_flag.items():
                if flag != "-":
                    flags[flag] = flags.get(flag, 0) + int(count)
    return RunSummary(
        nodeid, status,
        tps=tps, p99_ms=None if p99_us is None else p99_us / 1000,
        error_pct=100.0 * errors / requests if requests else None,
        flags=flags, report=report)


HEADERS = ["RESULT", "TPS", "p99 ms", "err %", "flags", "test", "report"]


def table(rows: list[RunSummary]) -> list[str]:
    """``rows`` as aligned text lines, a header first (numbers right-aligned)."""
    cells = [HEADERS] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADERS))]
    right = {1, 2, 3}
    lines = []
    for r in cells:
        lines.append("  ".join((c.rjust(w) if i in right else c.ljust(w))
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return lines
