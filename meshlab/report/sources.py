"""Report sections about where the numbers come from: raw files, Prometheus, changed settings.

- Raw data: links (relative to ``report.html``) to ``results.json``, ``smp.json``, the load
  runners' ``load-*.json`` and the collector series ``series/*.jsonl`` that exist in the run
  directory, with their sizes.
- Prometheus: the journal's ``prometheus`` section (CONTRACTS.md §5) — server, window and the
  result of every query, the four standard ones (:data:`PROMETHEUS_QUERIES`) first.
- Settings a fault changed: the values a fault saved for its revert
  (``fault_windows[].params.saved``, flattened), i.e. what the kernel had before the fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

#: The queries the Prometheus collector runs, in report order.
PROMETHEUS_QUERIES = ("requests_total", "requests_by_response_flags", "sidecar_cpu_seconds",
                      "sidecar_memory_bytes")
#: Raw files linked from the report, as glob patterns relative to the run directory.
RAW_PATTERNS = (("results.json", "run journal (CONTRACTS.md §3)"),
                ("smp.json", "Service Mesh Performance export"),
                ("load-*.json", "load runner result (CONTRACTS.md §2)"),
                ("series/*.jsonl", "collector series (CONTRACTS.md §5)"))


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    if n_bytes < 1024 * 1024:
        return f"{n_bytes / 1024:.1f} KiB"
    return f"{n_bytes / 1024 / 1024:,.1f} MiB"


def raw_files(run_dir: Path) -> list[dict[str, str]]:
    """Existing raw files of the run: ``[{"href", "name", "what", "size"}]``."""
    out = []
    for pattern, what in RAW_PATTERNS:
        for path in sorted(Path(run_dir).glob(pattern)):
            if path.is_file():
                name = path.relative_to(run_dir).as_posix()
                out.append({"href": quote(name), "name": name, "what": what,
                            "size": _size(path.stat().st_size)})
    return out


def _value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:,.4g}"


def prometheus_view(prom: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Prometheus section, or None when the journal has none ("not collected").

    Returns:
        ``{"url", "job", "window", "error", "queries": [{"name", "promql", "error", "rows":
        [{"labels", "value"}]}], "missing": [standard query names absent]}``.
    """
    if prom is None:
        return None
    window = prom.get("window") or {}
    start, end = window.get("start_epoch_s"), window.get("end_epoch_s")
    queries = list(prom.get("queries") or [])
    rank = {name: i for i, name in enumerate(PROMETHEUS_QUERIES)}
    queries.sort(key=lambda q: rank.get(q["name"], len(rank)))
    return {
        "url": prom.get("url") or "–", "job": prom.get("job") or "–",
        "window": (f"{end - start:,.1f} s" if isinstance(start, int | float)
                   and isinstance(end, int | float) and end > start else "–"),
        "error": prom.get("error") or "",
        "queries": [{"name": q["name"], "promql": q.get("promql") or "–",
                     "error": q.get("error") or "",
                     "rows": [{"labels": ", ".join(f"{k}={v}" for k, v in
                                                   sorted((r.get("labels") or {}).items()))
                               or "(no labels)", "value": _value(r.get("value"))}
                              for r in q.get("result") or []]} for q in queries],
        "missing": [name for name in PROMETHEUS_QUERIES
                    if name not in {q["name"] for q in queries}],
    }


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for key, inner in value.items()
                for item in _flatten(inner, f"{prefix}.{key}" if prefix else str(key))]
    return [(prefix, value)]


def fault_settings(fault_windows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What each fault saved for its revert: ``[{"fault", "setting", "before"}]``."""
    rows = []
    for window in fault_windows:
        saved = (window.get("params") or {}).get("saved")
        if isinstance(saved, dict):
            rows += [{"fault": window["name"], "setting": key, "before": str(value)}
                     for key, value in _flatten(saved)]
    return rows
