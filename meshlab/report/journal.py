"""Read and validate a run journal (``results.json``, CONTRACTS.md §3) for the report.

Validation is structural: the fields the report reads must have the documented types. Optional
sections may be absent or ``null`` (the report then says "not collected"); a field that is
present with the wrong type is an error naming the file and the dotted field path, e.g.
``reports/run-1/results.json: loads[1].latency_us.p99: expected a number, got 'fast'``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshlab.errors import ConfigError
from meshlab.journal import STATUSES

#: Journal schema prefix this reader understands.
SCHEMA_PREFIX = "meshlab.run/"

Validator = Callable[[Any, str], None]


class _Invalid(Exception):
    """A field failed validation (internal; turned into ConfigError with the file path)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field or "<document>"
        super().__init__(f"{self.field}: {message}")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _string(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {_type_name(value)} {value!r}")


def _number(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(field, f"expected a number, got {_type_name(value)} {value!r}")


def _boolean(value: Any, field: str) -> None:
    if not isinstance(value, bool):
        raise _Invalid(field, f"expected true or false, got {_type_name(value)} {value!r}")


def _optional(check: Validator) -> Validator:
    def validate(value: Any, field: str) -> None:
        if value is not None:
            check(value, field)
    return validate


def _obj(fields: dict[str, Validator] | None = None, *, required: tuple[str, ...] = (),
         values: Validator | None = None) -> Validator:
    """An object with known ``fields`` (and/or arbitrary keys whose values pass ``values``)."""
    def validate(value: Any, field: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(field, f"expected an object, got {_type_name(value)}")
        for name in required:
            if value.get(name) is None:
                raise _Invalid(f"{field}.{name}" if field else name, "required field is missing")
        for name, check in (fields or {}).items():
            if name in value:
                check(value[name], f"{field}.{name}" if field else name)
        if values is not None:
            for key, item in value.items():
                values(item, f"{field}.{key}")
    return validate


def _list(item: Validator) -> Validator:
    def validate(value: Any, field: str) -> None:
        if not isinstance(value, list):
            raise _Invalid(field, f"expected a list, got {_type_name(value)}")
        for index, element in enumerate(value):
            item(element, f"{field}[{index}]")
    return validate


def _status(value: Any, field: str) -> None:
    if value not in STATUSES:
        raise _Invalid(field, f"expected one of {', '.join(STATUSES)}, got {value!r}")


def _schema(value: Any, field: str) -> None:
    _string(value, field)
    if not value.startswith(SCHEMA_PREFIX):
        raise _Invalid(field, f"expected '{SCHEMA_PREFIX}<version>', got {value!r}")


def _scalar(value: Any, field: str) -> None:
    if not isinstance(value, str | int | float):
        raise _Invalid(field, f"expected a string or number, got {_type_name(value)}")


_num = _optional(_number)
_str = _optional(_string)
_named = {"name": _string}

_LOAD = _obj({
    "name": _string, "tool": _str, "mode": _str, "target_url": _str,
    "requests": _num, "errors": _num, "tps": _num, "error_rate": _num, "duration_s": _num,
    "start_epoch_s": _num, "end_epoch_s": _num,
    "status_counts": _optional(_obj(values=_number)),
    "latency_us": _optional(_obj(values=_num)),
    "hdr": _str, "processes": _num, "users": _num, "rate_per_s": _num,
    # CONTRACTS.md §2, open loop: latency_us/hdr are corrected, these measured from the send
    "distribution": _str, "connections": _num, "late": _num, "skipped": _num,
    "late_threshold_us": _num, "latency_uncorrected_us": _optional(_obj(values=_num)),
    "hdr_uncorrected": _str,
    "series": _optional(_list(_obj({
        "t_s": _number, "requests": _num, "errors": _num,
        "status_counts": _optional(_obj(values=_number)),
        "p50_us": _num, "p90_us": _num, "p99_us": _num, "max_us": _num, "hdr": _str,
        "p50_uncorrected_us": _num, "p90_uncorrected_us": _num, "p99_uncorrected_us": _num,
        "max_uncorrected_us": _num, "hdr_uncorrected": _str, "late": _num, "skipped": _num,
    }, required=("t_s",)))),
}, required=("name",))

def _positive(value: Any, field: str) -> None:
    _number(value, field)
    if value <= 0:
        raise _Invalid(field, f"expected a number > 0, got {value!r}")


#: CONTRACTS.md §5: the sampler's bookkeeping (files relative to the run directory).
_COLLECTORS = _obj({
    "interval_s": _optional(_positive), "started_epoch_s": _num, "ended_epoch_s": _num,
    "files": _optional(_obj(values=_string)), "samples": _optional(_obj(values=_number)),
    "gaps": _optional(_obj(values=_number)),
})
#: CONTRACTS.md §5: Prometheus queries run at the end of the run.
_PROMETHEUS = _obj({
    "url": _str, "job": _str, "error": _str,
    "window": _optional(_obj({"start_epoch_s": _num, "end_epoch_s": _num})),
    "queries": _optional(_list(_obj({
        "name": _string, "promql": _str, "error": _str,
        "result": _optional(_list(_obj({"labels": _optional(_obj(values=_scalar)),
                                        "value": _num}))),
    }, required=("name",)))),
})

_JOURNAL = _obj({
    "schema": _schema, "run_id": _string, "name": _str, "status": _status,
    "partial": _optional(_boolean), "started_at": _str, "ended_at": _str, "duration_s": _num,
    "env": _optional(_obj({"name": _str, "kernel": _str,
                           "sysctls": _optional(_obj(values=_scalar))})),
    "topology": _optional(_obj({
        "nodes": _optional(_list(_obj({**_named, "ip": _str, "pod_cidr": _str},
                                      required=("name",)))),
        "pods": _optional(_list(_obj({**_named, "namespace": _str, "node": _str, "ip": _str,
                                      "meshed": _optional(_boolean), "workload": _str},
                                     required=("name",)))),
        "services": _optional(_list(_obj({**_named, "namespace": _str, "cluster_ip": _str,
                                          "ports": _optional(_list(_obj()))},
                                         required=("name",)))),
    })),
    "activities": _optional(_list(_obj({**_named, "status": _str, "start": _str, "end": _str,
                                        "duration_s": _num}, required=("name",)))),
    "loads": _optional(_list(_LOAD)),
    "sidecars": _optional(_obj(values=_obj({
        "response_flags": _optional(_obj(values=_obj(values=_number))),
        "response_codes": _optional(_obj(values=_obj(values=_number))),
        "requests": _num,
        "access_log_sample": _optional(_list(_string)),
    }))),
    "fault_windows": _optional(_list(_obj({**_named, "start_epoch_s": _number,
                                           "end_epoch_s": _num, "params": _optional(_obj())},
                                          required=("name", "start_epoch_s")))),
    "observations": _optional(_obj(values=_obj({"kind": _str, "at": _str}))),
    "notes": _optional(_list(_string)),
    "collectors": _optional(_COLLECTORS),
    "prometheus": _optional(_PROMETHEUS),
    # passed: null when the check was not evaluated (a dry run measured nothing)
    "verdicts": _optional(_list(_obj({"check": _string, "subject": _str, "expected": _str,
                                      "observed": _str, "passed": _optional(_boolean),
                                      "message": _str}, required=("check",)))),
}, required=("schema", "run_id", "status"))


def validate_journal(journal: Any) -> None:
    """Check that ``journal`` has the shape the report reads.

    Args:
        journal: the decoded ``results.json`` document.

    Raises:
        ConfigError: ``"<field>: <what is wrong>"`` for the first invalid field.
    """
    try:
        _JOURNAL(journal, "")
    except _Invalid as err:
        raise ConfigError(str(err)) from None


def load_journal(path: Path) -> dict[str, Any]:
    """Read and validate a run journal.

    Args:
        path: the ``results.json`` file.

    Returns:
        The decoded journal.

    Raises:
        ConfigError: the file is missing, is not JSON, or a field is invalid; the message is
            ``"<path>: <field>: <what is wrong>"``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read run journal: {err.strerror or err}") from err
    try:
        journal: dict[str, Any] = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: <document>: not valid JSON: {err}") from err
    try:
        _JOURNAL(journal, "")
    except _Invalid as err:
        raise ConfigError(f"{path}: {err}") from None
    return journal
