"""The line layer of the collector series (``series/*.jsonl``, CONTRACTS.md §5): decoding a
file into JSON lines, and grouping lines per target into ``(epoch_s, value)`` points, where a
value None marks a gap. The per-file readers build on it (:mod:`meshlab.report.series`,
:mod:`meshlab.report.series_containers`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

#: ``(epoch seconds, value)``; value None is a gap (or no value, e.g. rtt without sockets).
Point = tuple[float, float | None]
@dataclass
class JsonlFile:
    """The decoded lines of one series file.

    Attributes:
        lines: the JSON objects with ``t`` and ``target``, in file order.
        truncated: the last line was cut short (not JSON) and was skipped.
        bad_lines: other lines skipped (not a JSON object with a numeric ``t`` and ``target``).
    """

    lines: list[dict[str, Any]]
    truncated: bool = False
    bad_lines: int = 0


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def parse_jsonl(text: str) -> JsonlFile:
    """Decode series lines, skipping a truncated last line and malformed ones."""
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    out = JsonlFile([])
    for index, line in enumerate(raw):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if index == len(raw) - 1:
                out.truncated = True
            else:
                out.bad_lines += 1
            continue
        if (isinstance(obj, dict) and number(obj.get("t")) is not None
                and isinstance(obj.get("target"), str)):
            out.lines.append(obj)
        else:
            out.bad_lines += 1
    return out


def read_jsonl(path: Path) -> JsonlFile:
    """Read and decode one series file (see :func:`parse_jsonl`); invalid UTF-8 is replaced."""
    return parse_jsonl(Path(path).read_text(encoding="utf-8", errors="replace"))


@dataclass
class TargetSeries:
    """Series of one target (pod or netns) common to every file.

    Attributes:
        target: the line's ``target``.
        kind: the line's ``kind`` (conntrack: ``node`` | ``pod``), else None.
        times: epoch seconds of the data lines.
        gaps: ``(epoch_s, error)`` of the gap lines.
    """

    target: str
    kind: str | None = None
    times: list[float] = field(default_factory=list)
    gaps: list[tuple[float, str]] = field(default_factory=list)


def by_key(samples: list[tuple[float, dict[str, float | None] | None]], fill: float | None
            ) -> dict[str, list[Point]]:
    """Per-key points from ``(t, {key: value} | None)`` samples (None: a gap → None for every
    key); a key missing from a sample gets ``fill``."""
    keys = sorted({key for _, values in samples for key in values or {}})
    return {key: [(t, None if values is None else values.get(key, fill))
                  for t, values in samples] for key in keys}


def counts(value: Any) -> dict[str, float | None]:
    """``{key: number}`` from a line's dict (non-numbers dropped)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): n for k, v in value.items() if (n := number(v)) is not None}


_T = TypeVar("_T", bound=TargetSeries)
#: ``(t, line)`` per line of a target; ``line`` None for a gap line.
_Samples = list[tuple[float, dict[str, Any] | None]]


def group(lines: Iterable[dict[str, Any]], make: Callable[[str], _T]
           ) -> dict[str, tuple[_T, _Samples]]:
    """Lines per target, with ``times``, ``gaps`` and ``kind`` filled in."""
    out: dict[str, tuple[_T, _Samples]] = {}
    for line in lines:
        t, name = float(line["t"]), line["target"]
        target, samples = out.setdefault(name, (make(name), []))
        if isinstance(line.get("kind"), str):
            target.kind = line["kind"]
        if "gap" in line:
            target.gaps.append((t, str(line["gap"])))
            samples.append((t, None))
        else:
            target.times.append(t)
            samples.append((t, line))
    return out


