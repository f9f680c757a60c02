"""Read a run's collector series (``series/*.jsonl``, CONTRACTS.md §5) into time series.

Every file holds one JSON object per line with ``"t"`` (epoch seconds) and ``"target"``; a line
with ``"gap"`` says the read of that target failed at ``t``. This module turns them into
``(epoch_s, value)`` points per target, where ``value`` None marks a gap (the chart breaks its
line there):

- ``envoy_stats``: lines are delta-encoded per target (a line holds the stats that changed since
  the target's previous data line; the first line, and the first after a gap, hold all). Counters
  become per-second rates between consecutive data lines (a counter that went down — a
  restarted sidecar — counts its new value, as Prometheus' ``rate()`` does); gauges stay values;
  histograms are ``{"p50", "p90", "p99", "p999", "max"}`` points (Envoy's interval quantiles).
- ``accesslog``: ``[second, cluster, flags, code, n]`` counts; a gap makes its second unknown.
- ``sockets`` / ``conntrack``: counts by state (a state absent from a line is 0) and scalars.
- ``containers``: per container, CPU cores used and CFS-throttled periods per second (rates of
  the cumulative cgroup counters between consecutive data lines; a counter that went down — a
  restarted container — counts its new value), memory in MiB and the CPU limit in cores.
- ``dns``: per pod, DNS queries per second sent to kube-dns (rates of cumulative counts).

A truncated last line (a run killed mid-write) is skipped, as are unknown keys; any other line
that is not a JSON object with ``t`` and ``target`` is skipped and counted in ``bad_lines``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab.report.series_containers import ContainerTarget, containers_series
from meshlab.report.series_dns import DnsTarget, dns_series
from meshlab.report.series_lines import (
    JsonlFile,
    Point,
    TargetSeries,
    by_key,
    counts,
    group,
    number,
    parse_jsonl,
    read_jsonl,
)

__all__ = ["FILES", "AccessTarget", "ConntrackTarget", "ContainerTarget", "DnsTarget",
           "EnvoyTarget", "JsonlFile", "Point", "RunSeries", "SocketTarget", "TargetSeries",
           "accesslog_series", "conntrack_series", "containers_series", "dns_series",
           "envoy_series", "error_label", "load_series", "parse_jsonl", "read_jsonl",
           "sockets_series"]

#: The §5 files, by the key the journal's ``collectors.files`` uses.
FILES = ("envoy_stats", "accesslog", "sockets", "conntrack", "containers", "dns")
#: Histogram quantile keys of an ``envoy_stats`` line.
QUANTILES = ("p50", "p90", "p99", "p999", "max")
#: Scalar keys of a ``sockets`` line.
SOCKET_SCALARS = ("retrans_total", "unacked", "send_q_bytes", "rtt_ms_max", "rtt_ms_avg")


@dataclass
class EnvoyTarget(TargetSeries):
    """One sidecar's decoded ``/stats`` series.

    Attributes:
        rates: counter → per-second rate points (None at the first sample and after a gap).
        gauges: gauge → value points.
        histograms: histogram → quantile (``p50``…``max``) → value points (None for ``nan``).
        final: the last decoded cumulative value of every counter and gauge.
        hist_state: the last decoded quantiles of every histogram.
    """

    rates: dict[str, list[Point]] = field(default_factory=dict)
    gauges: dict[str, list[Point]] = field(default_factory=dict)
    histograms: dict[str, dict[str, list[Point]]] = field(default_factory=dict)
    final: dict[str, float | None] = field(default_factory=dict)
    hist_state: dict[str, dict[str, float | None]] = field(default_factory=dict)


def envoy_series(lines: Iterable[dict[str, Any]],
                 select: Callable[[str], bool] | None = None) -> dict[str, EnvoyTarget]:
    """Delta-decode ``envoy_stats`` lines into per-target series.

    Args:
        lines: decoded lines of ``series/envoy_stats.jsonl``.
        select: keep series only for stat names it accepts (every stat is still decoded, so
            ``final`` is complete); default: all.

    Returns:
        ``{target: EnvoyTarget}``.
    """
    keep = select or (lambda _name: True)
    chosen: dict[str, bool] = {}
    out = {}
    for name, (target, rows) in group(lines, EnvoyTarget).items():
        seen: list[float] = []  # data-line times so far: a stat first seen late is back-filled
        last_t: float | None = None
        for t, line in rows:
            if line is None:
                for points in (*target.rates.values(), *target.gauges.values(),
                               *(p for qs in target.histograms.values() for p in qs.values())):
                    points.append((t, None))
                last_t = None
                continue
            if last_t is None:  # first line of the target, or first after a gap: holds all
                target.final, target.hist_state = {}, {}
            changed = counts(line.get("counters"))
            for stat in changed:
                if chosen.setdefault(stat, keep(stat)) and stat not in target.rates:
                    target.rates[stat] = [(x, None) for x in seen]
            for stat, points in target.rates.items():
                before = target.final.get(stat, 0.0)
                value = changed.get(stat, before)
                rate = None
                if last_t is not None and t > last_t and value is not None \
                        and before is not None:
                    rate = (value - before if value >= before else value) / (t - last_t)
                points.append((t, rate))
            gauges = counts(line.get("gauges"))
            target.final.update({**changed, **gauges})
            for stat in gauges:
                if chosen.setdefault(stat, keep(stat)) and stat not in target.gauges:
                    target.gauges[stat] = [(x, None) for x in seen]
            for stat, points in target.gauges.items():
                points.append((t, target.final.get(stat)))
            for stat, qs in (line.get("histograms") or {}).items():
                if isinstance(qs, dict):
                    target.hist_state[str(stat)] = {q: number(qs.get(q)) for q in QUANTILES}
                    if chosen.setdefault(stat, keep(stat)) and stat not in target.histograms:
                        target.histograms[stat] = {q: [(x, None) for x in seen]
                                                   for q in QUANTILES}
            for stat, by_q in target.histograms.items():
                for q in QUANTILES:
                    by_q[q].append((t, (target.hist_state.get(stat) or {}).get(q)))
            seen.append(t)
            last_t = t
        out[name] = target
    return out


@dataclass
class AccessTarget(TargetSeries):
    """One sidecar's access-log counts.

    Attributes:
        counts: ``(second, cluster, flags, code, n)`` rows, ``second`` the int epoch of the
            records' end.
    """

    counts: list[tuple[int, str, str, int, int]] = field(default_factory=list)

    def unknown_seconds(self) -> set[int]:
        """Seconds with a gap line and no record read for them (nothing is known there)."""
        seen = {row[0] for row in self.counts}
        return {int(t) for t, _ in self.gaps} - seen


def error_label(flags: str, code: int) -> str | None:
    """What an access-log count shows as an error: its response flags, or for flag ``-`` a
    status that is not 2xx/3xx ("no response" for 0, "HTTP 503 (no flag)"); None for a normal
    response."""
    if flags != "-":
        return flags
    if 200 <= code < 400:
        return None
    return "no response" if code == 0 else f"HTTP {code} (no flag)"


def accesslog_series(lines: Iterable[dict[str, Any]]) -> dict[str, AccessTarget]:
    """Collect ``accesslog`` count rows per target (malformed rows are skipped)."""
    out = {}
    for name, (target, samples) in group(lines, AccessTarget).items():
        for _, line in samples:
            for row in (line or {}).get("counts") or []:
                if not (isinstance(row, list) and len(row) == 5):
                    continue
                second, cluster, flags, code, n = row
                if None in (number(second), number(n), number(code)):
                    continue
                target.counts.append((int(second), str(cluster), str(flags), int(code), int(n)))
        out[name] = target
    return out


@dataclass
class SocketTarget(TargetSeries):
    """One pod's ``ss`` summary series.

    Attributes:
        states: ss state → socket count points.
        scalars: :data:`SOCKET_SCALARS` → points (``rtt_ms_*`` None without sockets).
        timers: timer kind → count points.
    """

    states: dict[str, list[Point]] = field(default_factory=dict)
    scalars: dict[str, list[Point]] = field(default_factory=dict)
    timers: dict[str, list[Point]] = field(default_factory=dict)


def sockets_series(lines: Iterable[dict[str, Any]]) -> dict[str, SocketTarget]:
    """Turn ``sockets`` lines into per-pod series (a state absent from a line counts 0)."""
    out = {}
    for name, (target, rows) in group(lines, SocketTarget).items():
        target.states = by_key([(t, None if d is None else counts(d.get("states")))
                                 for t, d in rows], 0.0)
        target.timers = by_key([(t, None if d is None else counts(d.get("timers")))
                                 for t, d in rows], 0.0)
        target.scalars = {key: [(t, None if d is None else number(d.get(key)))
                                for t, d in rows] for key in SOCKET_SCALARS}
        out[name] = target
    return out


@dataclass
class ConntrackTarget(TargetSeries):
    """One netns' conntrack series.

    Attributes:
        entries: total entry points.
        states: TCP state (or protocol) → entry points.
        timeouts: the last data line's ``timeout_s`` (``{state: {"min", "max"}}``).
    """

    entries: list[Point] = field(default_factory=list)
    states: dict[str, list[Point]] = field(default_factory=dict)
    timeouts: dict[str, dict[str, float | None]] = field(default_factory=dict)


def conntrack_series(lines: Iterable[dict[str, Any]]) -> dict[str, ConntrackTarget]:
    """Turn ``conntrack`` lines into per-netns series (a state absent from a line counts 0)."""
    out = {}
    for name, (target, rows) in group(lines, ConntrackTarget).items():
        target.entries = [(t, None if d is None else number(d.get("entries"))) for t, d in rows]
        target.states = by_key([(t, None if d is None else counts(d.get("states")))
                                 for t, d in rows], 0.0)
        last = next((d for _, d in reversed(rows) if d is not None), None) or {}
        timeouts = last.get("timeout_s")
        if isinstance(timeouts, dict):
            target.timeouts = {str(k): {"min": number(v.get("min")), "max": number(v.get("max"))}
                               for k, v in timeouts.items() if isinstance(v, dict)}
        out[name] = target
    return out


@dataclass
class RunSeries:
    """Everything read from a run's series files.

    Attributes:
        envoy_stats: ``{pod: EnvoyTarget}``, or None when the file was not collected.
        accesslog: ``{pod: AccessTarget}``, or None.
        sockets: ``{pod: SocketTarget}``, or None.
        conntrack: ``{netns: ConntrackTarget}``, or None.
        containers: ``{pod: ContainerTarget}``, or None.
        dns: ``{"kube-dns": DnsTarget}``, or None.
        files: file key → its path relative to the run directory (as the journal lists it).
        notes: what the reader skipped or could not read, for the report.
    """

    envoy_stats: dict[str, EnvoyTarget] | None = None
    accesslog: dict[str, AccessTarget] | None = None
    sockets: dict[str, SocketTarget] | None = None
    conntrack: dict[str, ConntrackTarget] | None = None
    containers: dict[str, ContainerTarget] | None = None
    dns: dict[str, DnsTarget] | None = None
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def last_t(self) -> float | None:
        """The latest sample time over every file, or None without samples."""
        times = [t for group in (self.envoy_stats, self.accesslog, self.sockets, self.conntrack,
                                 self.containers, self.dns)
                 for target in (group or {}).values()
                 for t in (*target.times, *(g[0] for g in target.gaps))]
        return max(times, default=None)


def _resolve(run_dir: Path, relative: str) -> Path | None:
    """``run_dir / relative`` if it stays inside the run directory, else None."""
    path = (run_dir / relative).resolve()
    return path if path.is_relative_to(run_dir.resolve()) else None


def load_series(run_dir: Path, collectors: dict[str, Any] | None,
                envoy_select: Callable[[str], bool] | None = None) -> RunSeries:
    """Read the series files the journal's ``collectors.files`` lists.

    A file the journal does not list is "not collected" (None); a listed file that does not
    exist (the sampler had written nothing yet, or no access-log record arrived) reads as no
    samples, with a note.

    Args:
        run_dir: the run directory.
        collectors: the journal's ``collectors`` section (None: nothing was collected).
        envoy_select: passed to :func:`envoy_series` as ``select``.

    Returns:
        The decoded series.
    """
    out = RunSeries()
    if not collectors:
        return out
    readers: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
        "envoy_stats": lambda lines: envoy_series(lines, envoy_select),
        "accesslog": accesslog_series, "sockets": sockets_series, "conntrack": conntrack_series,
        "containers": containers_series, "dns": dns_series}
    for key, relative in (collectors.get("files") or {}).items():
        if key not in readers or not isinstance(relative, str):
            continue
        out.files[key] = relative
        path = _resolve(Path(run_dir), relative)
        decoded = JsonlFile([])
        if path is None:
            out.notes.append(f"{relative}: outside the run directory, not read")
        elif not path.is_file():
            out.notes.append(f"{relative}: no such file (no samples written)")
        else:
            decoded = read_jsonl(path)
        if decoded.truncated:
            out.notes.append(f"{relative}: truncated last line skipped (the run was killed)")
        if decoded.bad_lines:
            out.notes.append(f"{relative}: {decoded.bad_lines} malformed lines skipped")
        setattr(out, key, readers[key](decoded.lines))
    return out
