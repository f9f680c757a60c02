"""Charts of the collector series (CONTRACTS.md §5) on the run's one time axis.

Every chart's x axis is seconds since the run's ``collectors.started_epoch_s`` (load charts use
the same axis when it exists, so charts stacked in the report line up), with the fault windows
shaded. A gap line breaks a chart's line at its time. What each chart shows:

- errors by response flag, one chart per sidecar (hop) that logged an error: access-log
  records per second whose ``response_flags`` is set (or, without a flag, whose code is not
  2xx/3xx, labelled ``HTTP <code>``);
- Envoy ``tcp_stats`` (meshlab's sidecar; ``meshlab/collectors/envoy_stats.py``):
  ``cx_tx_retransmitted_segments`` as a rate, the ``cx_tx_unacked_segments`` gauge and the p99
  of the ``cx_rtt_us`` histogram, a line per sidecar and cluster/listener;
- socket states per pod (``ss``; LISTEN left out), conntrack entries per netns and by state.
- CPU per container (with its limit) and CFS throttling per pod (container cgroups).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meshlab.report.charts import PALETTE, Series, Window, line_chart
from meshlab.report.series import Point, RunSeries, TargetSeries, error_label

#: Most lines one chart draws (the largest ones are kept; the rest are listed in a note).
MAX_LINES = 8
_TCP = ".tcp_stats."


@dataclass(frozen=True)
class TimeAxis:
    """The report's shared time axis.

    Attributes:
        origin_epoch_s: the epoch second drawn at x = 0.
        x_range: ``(low, high)`` in seconds since the origin.
        label: the x-axis label with its unit.
    """

    origin_epoch_s: float
    x_range: tuple[float, float]
    label: str

    def windows(self, fault_windows: list[dict[str, Any]]) -> list[Window]:
        """Fault windows in axis seconds (an open window runs to the end)."""
        return [Window(w["name"], w["start_epoch_s"] - self.origin_epoch_s,
                       None if w.get("end_epoch_s") is None
                       else w["end_epoch_s"] - self.origin_epoch_s) for w in fault_windows]

    def points(self, points: Sequence[Point], scale: float = 1.0
               ) -> list[tuple[float, float | None]]:
        """Epoch points as axis points, values multiplied by ``scale``."""
        return [(t - self.origin_epoch_s, None if v is None else v * scale) for t, v in points]


def run_axis(journal: dict[str, Any], series: RunSeries) -> TimeAxis | None:
    """The axis from ``collectors.started_epoch_s``, covering the samples, loads and faults;
    None when the run has no collectors (load charts then use each load's start)."""
    collectors = journal.get("collectors") or {}
    origin = collectors.get("started_epoch_s")
    if origin is None:
        return None
    starts = [load["start_epoch_s"] for load in journal.get("loads") or []
              if load.get("start_epoch_s") is not None]
    ends = [collectors.get("ended_epoch_s"), series.last_t()]
    ends += [load.get("end_epoch_s") for load in journal.get("loads") or []]
    ends += [w.get("end_epoch_s") or w["start_epoch_s"] for w in journal.get("fault_windows") or []]
    low = min([0.0] + [s - origin for s in starts])
    high = max([low + 1.0] + [e - origin for e in ends if e is not None])
    return TimeAxis(origin, (low, high), "time since collectors started (s)")


def gap_spans(targets: Iterable[TargetSeries], axis: TimeAxis) -> list[tuple[float, float]]:
    """Axis ranges without data: each run of gap lines, from its first gap to the target's
    next data line (or one interval-less point when the run ends with the file)."""
    spans = []
    for target in targets:
        events = sorted([(t, False) for t in target.times] + [(t, True) for t, _ in target.gaps])
        start = None
        for t, is_gap in events:
            if is_gap and start is None:
                start = t
            elif not is_gap and start is not None:
                spans.append((start - axis.origin_epoch_s, t - axis.origin_epoch_s))
                start = None
        if start is not None:
            last = max(t for t, _ in events)
            spans.append((start - axis.origin_epoch_s, last - axis.origin_epoch_s))
    return spans


def _chart(title: str, y_label: str, lines: list[tuple[str, list[tuple[float, float | None]]]],
           axis: TimeAxis, windows: list[Window],
           gaps: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
    """``{"svg", "note"}``: at most :data:`MAX_LINES` lines, the largest kept; lines that
    stay 0 are left out (and named in the note) when another line is not."""
    def peak(line: tuple[str, list[tuple[float, float | None]]]) -> float:
        return max((abs(v) for _, v in line[1] if v is not None and math.isfinite(v)),
                   default=0.0)

    zero = [name for name, points in lines if peak((name, points)) == 0.0]
    if len(zero) < len(lines):
        lines = [line for line in lines if peak(line) > 0.0]
    else:
        zero = []
    ranked = sorted(range(len(lines)), key=lambda i: peak(lines[i]), reverse=True)
    kept = [lines[i] for i in sorted(ranked[:MAX_LINES])]
    left_out = [lines[i][0] for i in sorted(ranked[MAX_LINES:])]
    series = [Series(name, points, PALETTE[i % len(PALETTE)], dashed=i >= len(PALETTE))
              for i, (name, points) in enumerate(kept)]
    note = " ".join(text for text in (
        f"Not drawn (smaller): {', '.join(left_out)}." if left_out else "",
        f"Always 0 (not drawn): {', '.join(zero)}." if zero else "") if text)
    return {"svg": line_chart(series, title=title, x_label=axis.label, y_label=y_label,
                              windows=windows, x_range=axis.x_range, gaps=gaps),
            "note": note}


def short_cluster(name: str) -> str:
    """A compact name for a cluster or listener: ``outbound|8080||a.ns.svc.cluster.local`` →
    ``→ a:8080``, ``inbound|8080||`` → ``inbound :8080``, ``0.0.0.0_15006`` → ``listener
    :15006``."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] == "outbound":
        return f"→ {parts[3].split('.')[0]}:{parts[1]}"
    if len(parts) == 4 and parts[0] == "inbound":
        return f"inbound :{parts[1]}"
    if "_" in name and name.rsplit("_", 1)[1].isdigit():
        return f"listener :{name.rsplit('_', 1)[1]}"
    return name


def _tcp_group(stat: str, suffix: str) -> str | None:
    """The cluster/listener of a ``tcp_stats`` stat ending in ``suffix``, or None."""
    if not stat.endswith(_TCP + suffix):
        return None
    head = stat[: -len(_TCP + suffix)]
    for prefix in ("cluster.", "listener."):
        if head.startswith(prefix):
            return short_cluster(head[len(prefix):].rstrip(";"))
    return head


def tcp_charts(series: RunSeries, axis: TimeAxis, windows: list[Window],
               order: list[str]) -> dict[str, Any] | None:
    """Retransmit rate, unacked segments and RTT p99 from Envoy ``tcp_stats``."""
    if series.envoy_stats is None:
        return None
    retrans, unacked, rtt = [], [], []
    for pod in _ordered(series.envoy_stats, order):
        target = series.envoy_stats[pod]
        for stat, points in target.rates.items():
            if (group := _tcp_group(stat, "cx_tx_retransmitted_segments")) is not None:
                retrans.append((f"{pod} {group}", axis.points(points)))
        for stat, points in target.gauges.items():
            if (group := _tcp_group(stat, "cx_tx_unacked_segments")) is not None:
                unacked.append((f"{pod} {group}", axis.points(points)))
        for stat, by_q in target.histograms.items():
            if (group := _tcp_group(stat, "cx_rtt_us")) is not None:
                rtt.append((f"{pod} {group}", axis.points(by_q["p99"], 0.001)))
    if not (retrans or unacked or rtt):
        return {"charts": [], "note": "No tcp_stats in the sidecars' stats (stock istio-proxy "
                                      "has no tcp_stats; the stats inclusion list must admit them)."}
    gaps = gap_spans(series.envoy_stats.values(), axis)
    charts = [_chart("TCP retransmitted segments/s (tcp_stats)", "segments/s", retrans, axis,
                     windows, gaps),
              _chart("TCP unacked segments (tcp_stats gauge)", "segments", unacked, axis,
                     windows, gaps),
              _chart("TCP RTT p99 per stats flush (tcp_stats cx_rtt_us)", "rtt (ms)", rtt, axis,
                     windows, gaps)]
    return {"charts": charts, "note": ""}


def _ordered(targets: dict[str, Any], order: list[str]) -> list[str]:
    """Target names in request-path order, then the rest alphabetically."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(targets, key=lambda name: (rank.get(name, len(rank)), name))


def flag_charts(series: RunSeries, axis: TimeAxis, windows: list[Window],
                order: list[str]) -> dict[str, Any] | None:
    """Per-second errors by response flag, one chart per sidecar that logged errors."""
    if series.accesslog is None:
        return None
    first = math.floor(axis.origin_epoch_s + axis.x_range[0])
    last = math.ceil(axis.origin_epoch_s + axis.x_range[1])
    charts, quiet = [], []
    for pod in _ordered(series.accesslog, order):
        target = series.accesslog[pod]
        per_label: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for second, _cluster, flags, code, n in target.counts:
            if (label := error_label(flags, code)) is not None:
                per_label[label][second] += n
        if not per_label:
            quiet.append(pod)
            continue
        unknown = target.unknown_seconds()
        lines = [(label, [(s - axis.origin_epoch_s, None if s in unknown else
                           float(by_second.get(s, 0))) for s in range(first, last + 1)])
                 for label, by_second in sorted(per_label.items())]
        charts.append(_chart(f"Errors by response flag per second — {pod}", "responses/s",
                             lines, axis, windows, gap_spans([target], axis)))
    return {"charts": charts, "quiet": quiet}


def socket_charts(series: RunSeries, axis: TimeAxis, windows: list[Window],
                  order: list[str]) -> list[dict[str, Any]] | None:
    """Sockets per state (``ss``), one chart per pod; LISTEN and all-zero states left out."""
    if series.sockets is None:
        return None
    charts = []
    for pod in _ordered(series.sockets, order):
        lines = [(state, axis.points(points))
                 for state, points in series.sockets[pod].states.items()
                 if state != "LISTEN" and any(v for _, v in points)]
        charts.append(_chart(f"TCP sockets by state — {pod}", "sockets", lines, axis, windows,
                             gap_spans([series.sockets[pod]], axis)))
    return charts


def container_charts(series: RunSeries, axis: TimeAxis, windows: list[Window],
                     order: list[str]) -> list[dict[str, Any]] | None:
    """Per pod: CPU cores used by each container (with its CPU limit, when it has one), when
    any container was throttled CFS-throttled periods per second, and when any was restarted
    the kubelet's restart counts."""
    if series.containers is None:
        return None
    charts = []
    for pod in _ordered(series.containers, order):
        target = series.containers[pod]
        gaps = gap_spans([target], axis)
        lines = [(c, axis.points(points)) for c, points in target.cpu_cores.items()]
        lines += [(f"{c} limit", axis.points(points))
                  for c, points in target.cpu_limit_cores.items()
                  if any(v is not None for _, v in points)]
        charts.append(_chart(f"CPU by container (cores) — {pod}", "cores", lines, axis,
                             windows, gaps))
        throttled = [(c, axis.points(points)) for c, points in target.throttled_per_s.items()
                     if any(v for _, v in points)]
        if throttled:
            charts.append(_chart(f"CFS throttling (throttled periods/s) — {pod}", "periods/s",
                                 throttled, axis, windows, gaps))
        restarted = [(c, axis.points(points)) for c, points in target.restarts.items()
                     if any(v for _, v in points)]
        if restarted:
            charts.append(_chart(f"Container restarts (kubelet restart count) — {pod}",
                                 "restarts", restarted, axis, windows, gaps))
    return charts


def dns_charts(series: RunSeries, axis: TimeAxis, windows: list[Window]
               ) -> list[dict[str, Any]] | None:
    """DNS queries per second each pod sent to kube-dns (pods that sent none are left out)."""
    if series.dns is None:
        return None
    charts = []
    for name, target in sorted(series.dns.items()):
        lines = [(pod, axis.points(points)) for pod, points in target.queries_per_s.items()
                 if any(v for _, v in points)]
        if lines:
            charts.append(_chart(f"DNS queries/s to {name} by pod", "queries/s", lines, axis,
                                 windows, gap_spans([target], axis)))
    return charts


def conntrack_charts(series: RunSeries, axis: TimeAxis, windows: list[Window],
                     interval_s: float) -> dict[str, Any] | None:
    """Conntrack entries per netns, entries by state over every netns, last timeouts."""
    if series.conntrack is None:
        return None
    targets = series.conntrack
    per_netns = [(f"{t.kind or 'netns'} {name}", axis.points(t.entries))
                 for name, t in sorted(targets.items())]
    sums: dict[str, dict[int, float | None]] = defaultdict(dict)
    gap_slots = {round((t - axis.origin_epoch_s) / interval_s)
                 for target in targets.values() for t, _ in target.gaps}
    for target in targets.values():
        for state, points in target.states.items():
            by_slot = {round((t - axis.origin_epoch_s) / interval_s): v for t, v in points}
            for slot, value in by_slot.items():  # one value per target and slot
                total = sums[state].get(slot, 0.0)
                sums[state][slot] = (None if value is None or total is None or slot in gap_slots
                                     else total + value)
    by_state = [(state, [(slot * interval_s, v) for slot, v in sorted(slots.items())])
                for state, slots in sorted(sums.items())]
    timeouts = [{"netns": name, "kind": t.kind or "–", "state": state,
                 "min": lim.get("min"), "max": lim.get("max")}
                for name, t in sorted(targets.items()) for state, lim in sorted(t.timeouts.items())]
    gaps = gap_spans(targets.values(), axis)
    return {"charts": [
        _chart("Conntrack entries per netns", "entries", per_netns, axis, windows, gaps),
        _chart("Conntrack entries by state (all netns; a gap in any netns leaves a gap)",
               "entries", by_state, axis, windows, gaps)], "timeouts": timeouts}


def gap_rows(series: RunSeries, axis: TimeAxis) -> list[dict[str, Any]]:
    """One row per file and target that had gap lines."""
    rows = []
    for key in ("envoy_stats", "accesslog", "sockets", "conntrack", "containers"):
        for name, target in sorted((getattr(series, key) or {}).items()):
            if target.gaps:
                first, last = target.gaps[0][0], target.gaps[-1][0]
                rows.append({"file": series.files.get(key, key), "target": name,
                             "count": len(target.gaps),
                             "span": f"{first - axis.origin_epoch_s:.1f} – "
                                     f"{last - axis.origin_epoch_s:.1f} s",
                             "error": target.gaps[-1][1]})
    return rows
