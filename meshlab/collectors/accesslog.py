"""Access-log collector: parse Istio access-log lines (JSON or TEXT) into per-cluster counts.

Both of Istio's encodings are accepted, detected per line (ENVOY.md §2):

- JSON (``EnvoyJSONLogFormatIstio``): a ``{...}`` object, kept as decoded.
- TEXT (``EnvoyTextLogFormat``, the default): ``[start] "METHOD PATH PROTO" code flags details
  termination "transport_failure" rx tx duration service_time "xff" "ua" "request_id"
  "authority" "upstream_host" cluster upstream_local downstream_local downstream_remote sni
  route``. It becomes a dict with the JSON keys; ``-`` becomes None and the numeric fields
  (``response_code``, ``bytes_received``, ``bytes_sent``, ``duration``) ints, as the meshlab
  sidecar writes them in JSON.

``response_flags`` is ``-`` when no flag is set; several flags are joined with ``,``. The same
parser serves the local sidecar's file and ``kubectl logs -c istio-proxy`` on a cluster; other
lines (a sidecar's stdout interleaves its own logs) are skipped.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

#: Field shapes after the request line: W = bare word, Q = double-quoted (may hold spaces).
_SHAPES = "WWWWQWWWWQQQQQWWWWWW"
#: One Istio TEXT line; groups in the order of :data:`TEXT_KEYS`.
TEXT_LINE = re.compile(r'^\[(\S+)\] "(\S+) (\S+) (\S+)" '
                       + " ".join(r'"([^"]*)"' if c == "Q" else r"(\S+)" for c in _SHAPES)
                       + r"\s*$")
TEXT_KEYS = (
    "start_time", "method", "path", "protocol", "response_code", "response_flags",
    "response_code_details", "connection_termination_details",
    "upstream_transport_failure_reason", "bytes_received", "bytes_sent", "duration",
    "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
    "upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address",
    "downstream_remote_address", "requested_server_name", "route_name",
)
_INT_KEYS = frozenset({"response_code", "bytes_received", "bytes_sent", "duration"})


def parse_text_line(line: str) -> dict[str, Any] | None:
    """One Istio TEXT access-log line as a JSON-keyed record, or None if it is not one."""
    m = TEXT_LINE.match(line.strip())
    if m is None:
        return None
    rec: dict[str, Any] = {}
    for key, value in zip(TEXT_KEYS, m.groups(), strict=True):
        if key == "response_flags":
            rec[key] = value
        elif value == "-":
            rec[key] = None
        elif key in _INT_KEYS:
            try:
                rec[key] = int(value)
            except ValueError:
                return None
        else:
            rec[key] = value
    return rec


def parse_line(line: str) -> dict[str, Any] | None:
    """One access-log line in either encoding (auto-detected), or None if it is neither."""
    line = line.strip()
    if line.startswith("{"):
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None
    if line.startswith("["):
        return parse_text_line(line)
    return None


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse access-log lines (JSON or TEXT, per line); other lines are skipped.

    Args:
        lines: raw log lines (a sidecar's stdout may interleave other log output).

    Returns:
        The records, in order, keyed by Istio's JSON keys.
    """
    records = []
    for line in lines:
        rec = parse_line(line)
        if rec is not None:
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
