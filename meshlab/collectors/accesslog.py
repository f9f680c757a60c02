"""Access-log collector: parse Istio JSON access-log lines into per-cluster flag counts.

Input lines are Istio's default JSON access-log format (ENVOY.md §1: ``response_flags`` is
``-`` when no flag is set, several flags are joined with ``,``). The same parser serves the
local sidecar's file and ``kubectl logs -c istio-proxy`` on a cluster.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse JSON access-log lines; lines that are not JSON objects are skipped.

    Args:
        lines: raw log lines (a sidecar's stdout may interleave other log output).

    Returns:
        The records, in order.
    """
    records = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def flags_by_cluster(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{upstream_cluster: {response_flags: count}}``; a missing cluster counts as ``-``."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for rec in records:
        cluster = rec.get("upstream_cluster") or "-"
        out[cluster][str(rec.get("response_flags") or "-")] += 1
    return {c: dict(sorted(v.items())) for c, v in sorted(out.items())}


def codes_by_cluster(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{upstream_cluster: {response_code: count}}`` (code ``0``: no response was sent)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for rec in records:
        out[rec.get("upstream_cluster") or "-"][str(rec.get("response_code", 0))] += 1
    return {c: dict(sorted(v.items())) for c, v in sorted(out.items())}
