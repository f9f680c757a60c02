"""Access-log records and their formatting (sans-IO), and a batching writer (ENVOY.md §2).

JSON follows Istio's ``EnvoyJSONLogFormatIstio`` (I:pilot/pkg/model/telemetry_logging.go) with
``SortProperties: false``: keys in the Go source order, which puts
``upstream_transport_failure_reason`` last. Envoy's ``json_format`` keeps the native type of a
value that is a single command operator: numbers for codes, bytes and durations, ``null`` for a
missing value, strings otherwise (``%RESP(...)%`` headers stay strings). TEXT is Istio's
``EnvoyTextLogFormat`` of the ``%UPSTREAM_CLUSTER_RAW%`` era (Istio >= 1.24; ``-`` for missing
values) and is the default encoding, as in Istio when ``accessLogEncoding`` is unset.
:mod:`meshlab.collectors.accesslog` parses both back into the same records.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass

from meshlab.proxy.upstream.router import Address

#: Key order of Istio's default JSON access log.
JSON_KEYS: tuple[str, ...] = (
    "start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
    "response_code_details", "connection_termination_details", "bytes_received", "bytes_sent",
    "duration", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id",
    "authority", "upstream_host", "upstream_cluster", "upstream_local_address",
    "downstream_local_address", "downstream_remote_address", "requested_server_name",
    "upstream_transport_failure_reason",
)


@dataclass
class AccessRecord:
    """Values of one access-log line (Istio's JSON keys; None prints as null / ``-``)."""

    start_time_s: float
    route_name: str | None
    method: str | None
    path: str | None
    protocol: str | None
    response_code: int
    response_flags: str
    response_code_details: str | None
    connection_termination_details: str | None
    upstream_transport_failure_reason: str | None
    bytes_received: int
    bytes_sent: int
    duration_ms: int
    upstream_service_time: str | None
    x_forwarded_for: str | None
    user_agent: str | None
    request_id: str | None
    authority: str | None
    upstream_host: str | None
    upstream_cluster: str | None
    upstream_local_address: str | None
    downstream_local_address: str | None
    downstream_remote_address: str | None
    requested_server_name: str | None = None


def format_address(addr: Address | None) -> str | None:
    """``ip:port`` of an address as the log prints it, None when there is none."""
    return f"{addr[0]}:{addr[1]}" if addr else None


_second: list[object] = [None, ""]  # [whole epoch second, its "YYYY-mm-ddTHH:MM:SS." text]


def format_start_time(epoch_s: float) -> str:
    """``%START_TIME%``: ISO-8601 UTC with milliseconds, e.g. ``2020-11-25T21:26:18.409Z``
    (the date and time part is formatted once per second)."""
    t = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.UTC)
    sec = int(epoch_s) if epoch_s >= 0 else None
    if sec is None or _second[0] != sec:
        _second[0], _second[1] = sec, t.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_second[1]}{t.microsecond // 1000:03d}Z"


def record_values(rec: AccessRecord) -> dict[str, object]:
    """The record as Istio JSON key → typed value (in :data:`JSON_KEYS` order)."""
    return {
        "start_time": format_start_time(rec.start_time_s),
        "route_name": rec.route_name if rec.route_name not in (None, "-") else None,
        "method": rec.method,
        "path": rec.path,
        "protocol": rec.protocol,
        "response_code": rec.response_code,
        "response_flags": rec.response_flags,
        "response_code_details": rec.response_code_details,
        "connection_termination_details": rec.connection_termination_details,
        "bytes_received": rec.bytes_received,
        "bytes_sent": rec.bytes_sent,
        "duration": rec.duration_ms,
        "upstream_service_time": rec.upstream_service_time,
        "x_forwarded_for": rec.x_forwarded_for,
        "user_agent": rec.user_agent,
        "request_id": rec.request_id,
        "authority": rec.authority,
        "upstream_host": rec.upstream_host,
        "upstream_cluster": rec.upstream_cluster,
        "upstream_local_address": rec.upstream_local_address,
        "downstream_local_address": rec.downstream_local_address,
        "downstream_remote_address": rec.downstream_remote_address,
        "requested_server_name": rec.requested_server_name,
        "upstream_transport_failure_reason": rec.upstream_transport_failure_reason,
    }


def format_json(rec: AccessRecord) -> str:
    """One JSON line (with the trailing newline)."""
    return json.dumps(record_values(rec), separators=(",", ":")) + "\n"


def _d(value: object) -> str:
    return "-" if value is None else str(value)


def format_text(rec: AccessRecord) -> str:
    """One line of Istio's default TEXT format (``-`` for a missing value)."""
    r = rec
    route = r.route_name if r.route_name is not None else "-"
    return (f'[{format_start_time(r.start_time_s)}] "{_d(r.method)} {_d(r.path)} '
            f'{_d(r.protocol)}" {r.response_code} {r.response_flags} '
            f'{_d(r.response_code_details)} {_d(r.connection_termination_details)} '
            f'"{_d(r.upstream_transport_failure_reason)}" {r.bytes_received} '
            f'{r.bytes_sent} {r.duration_ms} {_d(r.upstream_service_time)} '
            f'"{_d(r.x_forwarded_for)}" "{_d(r.user_agent)}" "{_d(r.request_id)}" '
            f'"{_d(r.authority)}" "{_d(r.upstream_host)}" {_d(r.upstream_cluster)} '
            f'{_d(r.upstream_local_address)} {_d(r.downstream_local_address)} '
            f'{_d(r.downstream_remote_address)} {_d(r.requested_server_name)} {route}\n')


class AccessLogWriter:
    """Appends one formatted line per record to ``path``.

    Lines logged during one event-loop iteration are written together, with one ``write(2)``
    at the end of that iteration (without a running loop: at once), so a line is in the file
    within microseconds of its request ending. Envoy buffers its file log and flushes every
    ``file_flush_interval`` (1 s); meshlab keeps lines immediately readable for chaos checks.

    Args:
        path: log file (its directory must be writable); None disables logging.
        encoding: ``TEXT`` (Istio's default) or ``JSON``.
    """

    def __init__(self, path: str | None, encoding: str = "TEXT") -> None:
        self.path = path
        self.encoding = encoding
        self._format = format_json if encoding == "JSON" else format_text
        self._fd: int | None = None
        self._pending: list[str] = []
        self.lines = 0
        if path:
            if path == "/dev/stdout":
                self._fd = sys.stdout.fileno()
            else:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, rec: AccessRecord) -> None:
        """Log ``rec`` (errors go to stderr once per failure, never raise)."""
        if self._fd is None:
            return
        self._pending.append(self._format(rec))
        self.lines += 1
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no running loop: write now
                self.flush()

    def flush(self) -> None:
        """Write the pending lines (errors go to stderr, never raise)."""
        if not self._pending or self._fd is None:
            self._pending.clear()
            return
        data = "".join(self._pending).encode("utf-8")
        self._pending.clear()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:  # disk full etc.: the proxy keeps serving
            print(f"meshlab.proxy: access log write failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Write what is pending and close the file."""
        self.flush()
        if self._fd is not None and self.path != "/dev/stdout":
            os.close(self._fd)
        self._fd = None

    def __repr__(self) -> str:
        return f"AccessLogWriter({self.path!r}, {self.encoding}, lines={self.lines})"
