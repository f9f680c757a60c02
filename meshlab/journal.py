"""The run journal: one ``results.json`` per run, rewritten atomically after every change.

Checks and the report read only this file (docs/CONTRACTS.md §3), so a report can be
re-rendered from a past run, and a run killed mid-way still leaves a journal marked
``"partial": true`` / ``"status": "running"``.

Activity records use Chaos Toolkit's vocabulary: ``{name, status, start, end, duration_s,
output, error}``. A value a dry run did not measure (:class:`~meshlab.missing.Missing`) is
kept as is in :attr:`RunJournal.data` (a suite reads it back) and written as ``null``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshlab.missing import json_default

SCHEMA = "meshlab.run/1"
#: A run's final ``status`` in its journal and report.
FINAL_STATUSES = ("passed", "failed", "skipped", "error")
#: Every value of the journal's ``status`` field: a final one, or ``running`` until the end.
STATUSES = (*FINAL_STATUSES, "running")


def iso(epoch_s: float) -> str:
    """Epoch seconds → ISO-8601 UTC with milliseconds (``2026-11-21T15:01:02.123Z``)."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def run_id_for(name: str, epoch_s: float | None = None) -> str:
    """A sortable, filesystem-safe run id: ``YYYYmmdd-HHMMSS-<slug of name>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(epoch_s or time.time()))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.split("::")[-1])[:60].strip("_") or "run"
    return f"{stamp}-{slug}"


class RunJournal:
    """Writes one run's ``results.json`` under ``<reports_dir>/<run_id>/``.

    Args:
        reports_dir: the reports root (created if missing).
        name: the run's name, e.g. a pytest node id.
        run_id: explicit id (default: :func:`run_id_for`); a clash gets a ``-2``… suffix.

    Attributes:
        data: the journal dict (CONTRACTS.md §3); mutate through the methods, then ``save``.
        dir: the run folder.
    """

    def __init__(self, reports_dir: Path | str, name: str, run_id: str | None = None) -> None:
        self.started_s = time.time()
        base = run_id or run_id_for(name, self.started_s)
        root = Path(reports_dir)
        root.mkdir(parents=True, exist_ok=True)
        candidate, n = base, 1
        while (root / candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        self.dir = root / candidate
        self.dir.mkdir()
        self.data: dict[str, Any] = {
            "schema": SCHEMA, "run_id": candidate, "name": name, "status": "running",
            "partial": True, "started_at": iso(self.started_s), "ended_at": None,
            "duration_s": None, "env": {}, "topology": {}, "activities": [], "loads": [],
            "sidecars": {}, "fault_windows": [], "observations": {}, "verdicts": [],
            "notes": [],
        }
        self.save()

    def __repr__(self) -> str:
        return (f"RunJournal(run_id={self.data['run_id']!r}, status={self.data['status']!r}, "
                f"loads={len(self.data['loads'])}, verdicts={len(self.data['verdicts'])})")

    @property
    def path(self) -> Path:
        """The ``results.json`` file."""
        return self.dir / "results.json"

    def save(self) -> Path:
        """Write ``results.json`` atomically (tmp + rename) and return its path."""
        tmp = self.dir / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=json_default))
        tmp.replace(self.path)
        return self.path

    @contextmanager
    def activity(self, name: str) -> Iterator[dict[str, Any]]:
        """Record an activity; the yielded dict's ``output`` may be set by the caller.

        The record is saved with ``status`` ``succeeded`` or ``failed`` (and ``error``) even
        when the block raises; the exception propagates.
        """
        start = time.time()
        record: dict[str, Any] = {"name": name, "status": "running", "start": iso(start),
                                  "end": None, "duration_s": None, "output": None, "error": None}
        self.data["activities"].append(record)
        self.save()
        try:
            yield record
            record["status"] = "succeeded"
        except BaseException as exc:
            record["status"] = "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            end = time.time()
            record.update(end=iso(end), duration_s=round(end - start, 6))
            self.save()

    def add_load(self, name: str, result: dict[str, Any]) -> None:
        """Append a load result (CONTRACTS.md §2) under ``name``."""
        self.data["loads"].append({"name": name, **result})
        self.save()

    def add_observation(self, name: str, kind: str, data: Any, **meta: Any) -> None:
        """Record something a suite observed (a socket snapshot, a stats delta, a kernel probe
        result) under ``observations[name]`` as ``{"kind", "at", "data", **meta}``; checks and
        the report read it from there.

        Args:
            name: unique key, e.g. ``"l1-sockets-after-poweroff"``.
            kind: what it is: ``sockets``, ``envoy_stats``, ``tcp_stats_delta``, ``probe``….
            data: JSON-ready payload.
            **meta: extra JSON-ready fields (e.g. ``pod="fortio-server-0"``).
        """
        self.data.setdefault("observations", {})[name] = {"kind": kind, "at": iso(time.time()),
                                                          "data": data, **meta}
        self.save()

    def add_note(self, text: str) -> None:
        """Append a line to ``notes`` (shown at the top of the report) and save."""
        self.data["notes"].append(str(text))
        self.save()

    def add_fault_window(self, name: str, start_epoch_s: float, end_epoch_s: float,
                         params: dict[str, Any] | None = None) -> None:
        """Record when a fault was active (the report shades it on every chart) and with which
        parameters (incl. time-scaled kernel timeouts and the values it saved)."""
        self.data["fault_windows"].append({"name": name, "start_epoch_s": start_epoch_s,
                                           "end_epoch_s": end_epoch_s,
                                           "params": params or {}})
        self.save()

    def finish(self, status: str) -> Path:
        """Close the run with ``status`` (``passed``/``failed``/``error``) and save."""
        end = time.time()
        self.data.update(status=status, partial=False, ended_at=iso(end),
                         duration_s=round(end - self.started_s, 3))
        return self.save()
