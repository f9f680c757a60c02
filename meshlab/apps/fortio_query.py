"""Fortio's echo query API as pure decisions (sans-IO).

Fortio's echo server reads knobs from the query string (``/echo?delay=250ms&status=503:10``). This
module turns those strings into an :class:`EchoDecision` without touching a socket or a clock, so
every rule can be tested with a seeded :class:`random.Random`.

Rules (as fortio's ``fhttp/http_utils.go`` applies them; ``generateStatus`` / ``generateSize`` /
``generateDelay`` / ``generateSingleProbability``):

- A value without ``:`` and without ``,`` is taken 100 % of the time (``status=503``).
- A weighted value is ``v1:p1,v2:p2,…``; each ``p`` is a percentage in [0, 100] with an optional
  trailing ``%``. Percentages accumulate (rounded to 4 decimals); a sum above 100 makes the whole
  value invalid. One roll ``r = 100 * uniform[0, 1)`` picks the first entry with ``r <= cum``;
  no hit falls back to the default (status 200, no delay, echo the body).
- Invalid input: ``status`` → 400, ``size`` → echo mode, ``delay`` → no delay.
- ``delay`` is a Go duration (``250ms``, ``1.5s``, ``1m``) capped at ``max_delay_s`` (fortio
  ``-max-echo-delay``, 1.5 s by default); ``size`` is clamped to [0, ``max_payload_bytes``]
  (``-maxpayloadsizekb``, 256 KiB).
- ``close`` / ``gzip``: empty or ``false`` → no; ``true`` or anything that is not a number → yes;
  a number ``p`` → yes with probability ``p`` %.
- ``header=Name:Value`` (repeatable) adds a response header; values without ``:`` are skipped.

Query strings are parsed as Go's ``url.ParseQuery``: ``&``-separated, ``+`` is a space, the
first value of a key wins for single-valued knobs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote_plus

MAX_DELAY_S_DEFAULT = 1.5
MAX_PAYLOAD_BYTES_DEFAULT = 256 * 1024

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DURATION_PART_RE = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                    "m": 60.0, "h": 3600.0}

T = TypeVar("T")


@dataclass(frozen=True)
class EchoLimits:
    """Caps fortio applies to the query knobs.

    Attributes:
        max_delay_s: longest ``delay`` honoured, in seconds (fortio ``-max-echo-delay``).
        max_payload_bytes: largest ``size`` honoured, in bytes (fortio ``-maxpayloadsizekb``).
    """

    max_delay_s: float = MAX_DELAY_S_DEFAULT
    max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT


@dataclass(frozen=True)
class EchoDecision:
    """What one echo request should get back.

    Attributes:
        delay_s: seconds to wait before replying (0 = no wait).
        status: HTTP status code to reply with (may be outside 100..999: fortio then drops the
            connection without a reply).
        size: payload bytes to send instead of echoing the body; ``None`` echoes the body.
        close: send ``Connection: close`` and close the connection after the reply.
        gzip: gzip the reply body (only ever true when the client accepts gzip).
        headers: extra response headers from ``header=`` arguments, in order.
    """

    delay_s: float = 0.0
    status: int = 200
    size: int | None = None
    close: bool = False
    gzip: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)


def parse_query(query: str) -> dict[str, list[str]]:
    """Parse a query string the way Go's ``url.ParseQuery`` does.

    Args:
        query: the part of the request target after ``?`` (without the ``?``).

    Returns:
        Each key mapped to its values in order of appearance. Pairs containing ``;`` are
        dropped, as Go rejects them.
    """
    result: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        result.setdefault(unquote_plus(key), []).append(unquote_plus(value))
    return result


def parse_go_duration_s(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds.

    Args:
        text: e.g. ``"250ms"``, ``"1.5s"``, ``"1h2m"``, ``"-3us"`` or ``"0"``.

    Returns:
        The duration in seconds (negative durations are allowed, as in Go).

    Raises:
        ValueError: ``text`` is not a Go duration.
    """
    body = text
    sign = 1.0
    if body[:1] in ("+", "-"):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total_s = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART_RE.match(body, pos)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}")
        total_s += float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]
        pos = match.end()
    return sign * total_s


def _parse_go_int(text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


def _parse_percent(text: str) -> float:
    text = text.removesuffix("%")
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    value = float(text)
    if value < 0 or value > 100:
        raise ValueError(f"percentage {value} outside [0, 100]")
    return value


def parse_weighted(text: str, parse_value: Callable[[str], T]) -> list[tuple[T, float]]:
    """Parse ``v1:p1,v2:p2,…`` into values with cumulative percentages.

    Args:
        text: the weighted list.
        parse_value: turns one ``v`` into a value; raises ValueError when invalid.

    Returns:
        ``(value, cumulative_percent)`` pairs; the last cumulative percent is at most 100.

    Raises:
        ValueError: an entry is malformed, a percentage is outside [0, 100] or they sum above 100.
    """
    table: list[tuple[T, float]] = []
    cumulative_pct = 0.0
    for entry in text.split(","):
        parts = entry.split(":")
        if len(parts) != 2:
            raise ValueError(f"entry {entry!r} needs exactly one ':'")
        value = parse_value(parts[0])
        cumulative_pct += _parse_percent(parts[1])
        rounded_pct = round(cumulative_pct, 4)
        if rounded_pct > 100:
            raise ValueError(f"percentages of {text!r} sum above 100")
        table.append((value, rounded_pct))
    return table


def roll(table: Sequence[tuple[T, float]], rng: random.Random) -> T | None:
    """Pick from a cumulative table with one roll in [0, 100); ``None`` when nothing is hit."""
    roll_pct = 100.0 * rng.random()
    for value, cumulative_pct in table:
        if roll_pct <= cumulative_pct:
            return value
    return None


def _is_simple(text: str) -> bool:
    return "," not in text and ":" not in text


def pick_status(text: str, rng: random.Random) -> int:
    """Status for ``status=``: 200 when empty or not hit, 400 when invalid."""
    if not text:
        return 200
    try:
        if _is_simple(text):
            return _parse_go_int(text)
        picked = roll(parse_weighted(text, _parse_go_int), rng)
    except ValueError:
        return 400
    return 200 if picked is None else picked


def pick_size(text: str, rng: random.Random, max_payload_bytes: int) -> int | None:
    """Payload size for ``size=``; ``None`` (echo the body) when empty, invalid or not hit."""
    if not text:
        return None

    def clamp(raw: str) -> int:
        return min(max(_parse_go_int(raw), 0), max_payload_bytes)

    try:
        if _is_simple(text):
            return clamp(text)
        return roll(parse_weighted(text, clamp), rng)
    except ValueError:
        return None


def pick_delay_s(text: str, rng: random.Random, max_delay_s: float) -> float:
    """Delay in seconds for ``delay=``; 0 when empty, invalid, negative or not hit."""
    if not text:
        return 0.0

    def capped(raw: str) -> float:
        return min(parse_go_duration_s(raw), max_delay_s)

    try:
        if _is_simple(text):
            delay_s: float | None = capped(text)
        else:
            delay_s = roll(parse_weighted(text, capped), rng)
    except ValueError:
        return 0.0
    return max(delay_s or 0.0, 0.0)


def pick_probability(text: str, rng: random.Random) -> bool:
    """fortio's single-probability knob (``close=``, ``gzip=``)."""
    if text in ("", "false"):
        return False
    if text == "true" or not _FLOAT_RE.fullmatch(text):
        return True
    return 100.0 * rng.random() <= float(text)


def extra_headers(values: Sequence[str]) -> list[tuple[str, str]]:
    """Split ``header=Name:Value`` arguments; entries without ``:`` are skipped as fortio does."""
    headers = []
    for value in values:
        name, sep, header_value = value.partition(":")
        if sep:
            headers.append((name, header_value))
    return headers


def _first(query: Mapping[str, list[str]], key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


def decide_common(query: Mapping[str, list[str]], rng: random.Random,
                  limits: EchoLimits) -> EchoDecision:
    """The knobs fortio's echo and debug handlers share: ``delay``, ``close``, ``header``."""
    return EchoDecision(
        delay_s=pick_delay_s(_first(query, "delay"), rng, limits.max_delay_s),
        close=pick_probability(_first(query, "close"), rng),
        headers=extra_headers(query.get("header", [])),
    )


def decide_echo(query: Mapping[str, list[str]], rng: random.Random, limits: EchoLimits,
                accepts_gzip: bool = False) -> EchoDecision:
    """Everything the echo handler decides from the query, in fortio's roll order.

    Args:
        query: parsed query (see :func:`parse_query`).
        rng: source of the rolls; pass ``random.Random(seed)`` for reproducible tests.
        limits: delay and size caps.
        accepts_gzip: the request's ``Accept-Encoding`` mentions gzip.

    Returns:
        The decision for this request.
    """
    common = decide_common(query, rng, limits)
    status = pick_status(_first(query, "status"), rng)
    gzip = accepts_gzip and pick_probability(_first(query, "gzip"), rng)
    size = pick_size(_first(query, "size"), rng, limits.max_payload_bytes)
    return EchoDecision(delay_s=common.delay_s, status=status, size=size, close=common.close,
                        gzip=gzip, headers=common.headers)
