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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshlab.envs.base import Env
from meshlab.envs.capabilities import PodLogFiles

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


def end_second(rec: dict[str, Any]) -> int | None:
    """Epoch second (int) at which a record's request ended: ``start_time`` + ``duration``
    (ms), or None without a parsable ``start_time``."""
    start = rec.get("start_time")
    if not isinstance(start, str):
        return None
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        return None
    if when.tzinfo is None:  # Envoy's %START_TIME% is UTC
        when = when.replace(tzinfo=UTC)
    start_s = when.timestamp()
    duration_ms = rec.get("duration")
    return int(start_s + (duration_ms / 1000 if isinstance(duration_ms, int | float) else 0))


def count_records(records: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """``[[second, cluster, flags, code, n], …]`` sorted (docs/CONTRACTS.md §5 ``accesslog``).

    ``second`` is :func:`end_second` (records without a start time are left out), ``cluster``
    the upstream cluster (``-`` if none), ``flags`` as logged (``-``: none), ``code`` the
    response code (0: no response was sent).
    """
    counts: Counter[tuple[int, str, str, int]] = Counter()
    for rec in records:
        second = end_second(rec)
        if second is not None:
            counts[(second, rec.get("upstream_cluster") or "-",
                    str(rec.get("response_flags") or "-"), int(rec.get("response_code") or 0))] += 1
    return [[*key, n] for key, n in sorted(counts.items())]


class AccessLogTarget:
    """A sampler target: the access-log records one sidecar wrote since the previous read.

    Starts at the log's end when created. Reads the file from a byte offset when the env has a
    local log folder (``env.pod_log_dir``, the local lab), else re-reads
    :meth:`Env.access_log_lines` and skips the lines already seen. A log that shrank (a new
    pod) is read from its start; an incomplete last line waits for the next read.

    Args:
        env: the env.
        pod: the meshed pod; also the series' ``target``.
    """

    series = "accesslog"

    def __init__(self, env: Env, pod: str) -> None:
        self.env = env
        self.name = pod
        self._path: Path | None = (Path(env.pod_log_dir(pod)) / "access.log"
                                   if isinstance(env, PodLogFiles) else None)
        if self._path is not None:
            self._mark = self._path.stat().st_size if self._path.exists() else 0
        else:
            self._mark = len(env.access_log_lines(pod))

    def __repr__(self) -> str:
        return f"AccessLogTarget(pod={self.name!r}, mark={self._mark})"

    def _file_lines(self, path: Path) -> list[str]:
        with open(path, "rb") as f:
            if f.seek(0, 2) < self._mark:
                self._mark = 0
            f.seek(self._mark)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._mark += cut
        return data[:cut].decode(errors="replace").splitlines()

    def _env_lines(self) -> list[str]:
        lines = self.env.access_log_lines(self.name)
        if len(lines) < self._mark:
            self._mark = 0
        new = lines[self._mark:]
        if new and parse_line(new[-1]) is None:  # maybe still being written
            new.pop()
        self._mark += len(new)
        return new

    def read(self) -> dict[str, Any] | None:
        """``{"counts": count_records(new records)}``, or None when there is none.

        Raises:
            OSError: the log file could not be read.
            MeshlabError: the env could not read the log.
        """
        lines = self._file_lines(self._path) if self._path is not None else self._env_lines()
        records = parse_lines(lines)
        return {"counts": count_records(records)} if records else None
