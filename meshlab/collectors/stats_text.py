"""Envoy admin ``/stats`` text, parsed in one place (sans-IO; ENVOY.md §3).

``name: value`` lines: counters and gauges have integer values; histograms have
``P0(interval,cumulative) … P100(…)`` or ``No recorded values``; text readouts are quoted. Used
by the collectors (:mod:`meshlab.collectors.envoy_stats`, :mod:`meshlab.collectors.tcp_stats_ss`),
the experiment's settle wait, the chaostoolkit probes and the suites.

:func:`stat_lines` splits a page into ``(name, value text)`` and :func:`int_value` reads a
counter or gauge; :func:`stat_ints`, :func:`parse_stats` and :func:`parse_stats_text` build on
them. Their options are the ways callers read a line: at the last ``": "`` (the default: names
may hold ``": "``) or the first, with or without whitespace around the number, signed or not.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator


def stat_lines(text: str, sep: str = ": ", *, first: bool = False,
               newline: str | None = None) -> Iterator[tuple[str, str]]:
    """Each line of a ``/stats`` page as ``(name, value text)``, in page order.

    Args:
        text: the page.
        sep: what separates a name from its value.
        first: split at the first ``sep`` instead of the last.
        newline: lines end only at this string (as for a multi-line regex's ``$``), not at
            every line boundary of :meth:`str.splitlines` (``\\r``, ``\\x1c``…).

    A line without ``sep`` (blank, garbage) is ``(line, "")``; nothing is skipped or stripped.
    """
    for line in text.split(newline) if newline else text.splitlines():
        name, found, value = line.partition(sep) if first else line.rpartition(sep)
        yield (name, value) if found else (line, "")


def int_value(value: str, *, strip: bool = False, signed: bool = True) -> int | None:
    """The integer of a counter's or gauge's value text, or None if it is not one (a
    histogram, ``No recorded values``, a text readout, garbage).

    Args:
        value: the value text of :func:`stat_lines`.
        strip: allow whitespace around the number.
        signed: a ``-`` sign and :meth:`str.isdigit` digits (gauges can be negative); False:
            decimal digits only, as a regex's ``\\d+``.
    """
    digits = value.strip() if strip else value
    if not (digits.lstrip("-").isdigit() if signed else digits.isdecimal()):
        return None
    return int(digits)


def stat_ints(text: str, sep: str = ": ", *, first: bool = False, newline: str | None = None,
              strip: bool = False, signed: bool = True) -> Iterator[tuple[str, int]]:
    """Each counter or gauge line of a page as ``(name, value)``, in page order (a name seen
    twice comes twice); lines whose value is no integer are skipped. Options as for
    :func:`stat_lines` and :func:`int_value`."""
    for name, value in stat_lines(text, sep, first=first, newline=newline):
        if (number := int_value(value, strip=strip, signed=signed)) is not None:
            yield name, number


def parse_stats(text: str) -> dict[str, int]:
    """Parse ``/stats`` text into ``{name: value}`` for counters and gauges.

    Lines whose value is not an integer (histograms, ``No recorded values``) are skipped.
    Names may contain ``:`` (``listener.0.0.0.0_15006``… does not, but IPv6 addresses do), so
    the value is what follows the *last* ``": "``.
    """
    return parse_stats_text(text, histograms=False)[0]


#: Envoy's text-format histogram quantiles → the series' keys (docs/CONTRACTS.md §5).
SERIES_QUANTILES = {"P50": "p50", "P90": "p90", "P99": "p99", "P99.9": "p999", "P100": "max"}
_QUANTILE = re.compile(r"(P[\d.]+)\(([^,()]+),([^,()]+)\)")
NO_VALUES = "No recorded values"


def _number(text: str | None) -> float | int | None:
    if text is None or text in ("nan", "-nan"):
        return None
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_histogram(value: str) -> dict[str, float | int | None] | None:
    """The last interval's quantiles of one text histogram value, or None if it is not one.

    ``P0(interval,cumulative) P25(…) … P100(…)`` (``stats_render.render_text``, Envoy
    ``StatsTextRender``) → ``{"p50", "p90", "p99", "p999", "max"}`` from the *interval* values
    (None for ``nan``: nothing recorded in the last flush interval). ``No recorded values`` →
    every key None.
    """
    if value == NO_VALUES:
        return dict.fromkeys(SERIES_QUANTILES.values())
    found = {q: interval for q, interval, _ in _QUANTILE.findall(value)}
    if not found:
        return None
    return {key: _number(found.get(q)) for q, key in SERIES_QUANTILES.items()}


def parse_stats_text(text: str, histograms: bool = True
                     ) -> tuple[dict[str, int], dict[str, dict[str, float | int | None]]]:
    """Parse a whole ``/stats`` text page (``histograms=False``: integers only, histogram
    lines skipped unparsed).

    Returns:
        ``({name: integer value}, {histogram name: quantiles of parse_histogram})``; text
        readouts (``name: "text"``) are left out.
    """
    scalars: dict[str, int] = {}
    hists: dict[str, dict[str, float | int | None]] = {}
    for name, value in stat_lines(text):
        if not name:
            continue
        if (number := int_value(value)) is not None:
            scalars[name] = number
        elif histograms and (quantiles := parse_histogram(value)) is not None:
            hists[name] = quantiles
    return scalars, hists


def stats_path(filter_regex: str | None = None) -> str:
    """The admin path for ``/stats`` with an optional (URL-encoded) ``filter`` regex."""
    if not filter_regex:
        return "/stats"
    return "/stats?filter=" + urllib.parse.quote(filter_regex, safe="")
