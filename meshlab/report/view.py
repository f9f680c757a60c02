"""Turn a validated run journal into the plain values the report template shows.

All formatting (units, precision, "not collected") happens here so the template stays a layout.
A section whose journal key is absent or ``null`` becomes ``None`` ("not collected"); a section
that was collected but is empty becomes an empty list ("none").
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshlab.report.charts import PALETTE, Series, line_chart
from meshlab.report.hops import hop_view, path_order
from meshlab.report.series import RunSeries, load_series
from meshlab.report.series_charts import (
    TimeAxis,
    conntrack_charts,
    container_charts,
    dns_charts,
    flag_charts,
    gap_rows,
    run_axis,
    socket_charts,
    tcp_charts,
)
from meshlab.report.sources import fault_settings, prometheus_view, raw_files
from meshlab.report.trends import load_elapsed_s
from meshlab.report.windows import window_tables

#: What Envoy response flags mean (DESIGN.md §5.6), shown next to the flag table.
FLAG_MEANINGS: dict[str, str] = {
    "-": "none (normal response)",
    "NR": "no route configured",
    "UH": "no healthy upstream host",
    "UF": "upstream connection failure",
    "UC": "upstream connection terminated",
    "UO": "upstream overflow (circuit breaker)",
    "URX": "upstream retry limit exceeded",
    "UT": "upstream request timeout",
    "LR": "connection local reset",
    "UR": "upstream remote reset",
    "DC": "downstream connection terminated",
    "DPE": "downstream protocol error",
    "UPE": "upstream protocol error",
    "SI": "stream idle timeout",
}

_LATENCY_KEYS = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"),
                 ("max", "max"))


def fmt_ms(value_us: Any) -> str:
    """Microseconds as milliseconds with µs precision: ``12345 -> "12.345"``; missing -> "–"."""
    return "–" if value_us is None else f"{value_us / 1000:.3f}"


def fmt_pct(ratio: Any) -> str:
    """A ratio as a percentage with 3 decimals: ``0.0001 -> "0.010 %"``; missing -> "–"."""
    return "–" if ratio is None else f"{ratio * 100:.3f} %"


def fmt_num(value: Any, decimals: int = 1) -> str:
    """A number with fixed decimals and thousands separators; missing -> "–"."""
    if value is None:
        return "–"
    return f"{value:,.0f}" if decimals == 0 else f"{value:,.{decimals}f}"


def fmt_epoch(epoch_s: Any) -> str:
    """Epoch seconds as UTC ``HH:MM:SS.mmm``; missing -> "–"."""
    if epoch_s is None:
        return "–"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _parse_iso(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def banner(journal: dict[str, Any]) -> dict[str, str]:
    """The status banner: ``{"kind", "title", "detail"}``; PARTIAL wins over the status (a
    journal still ``running``/``partial``, or collectors that never stopped)."""
    status = journal["status"]
    collectors = journal.get("collectors")
    sampler_open = collectors is not None and collectors.get("ended_epoch_s") is None
    if journal.get("partial") or status == "running" or sampler_open:
        detail = ("The run did not finish writing its journal; sections below show what was "
                  "recorded so far and may be incomplete.")
        if sampler_open:
            detail += " The collectors never stopped (collectors.ended_epoch_s is null)."
        return {"kind": "partial", "title": f"PARTIAL — run status: {status}", "detail": detail}
    details = {"passed": "Every check passed.",
               "failed": "The system under test failed one or more checks.",
               "error": "The experiment itself failed (lab, fault or load error); verdicts "
                        "may be missing.",
               "skipped": "The test was skipped (pytest.skip, or a dry run); sections show "
                          "what ran before."}
    if status == "skipped" and (journal.get("env") or {}).get("dry_run"):
        return {"kind": status, "title": "DRY RUN — SKIPPED",
                "detail": "A dry run: every manifest and command was printed, nothing was sent "
                          "or measured, so the loads and observations are empty and the checks "
                          "were not evaluated."}
    return {"kind": status, "title": status.upper(), "detail": details[status]}


def load_rows(loads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary-table rows, one per load. An open-loop load's latencies are the corrected ones
    (CONTRACTS.md §2); ``latency_uncorrected_ms`` (None otherwise) and ``late_skipped`` show the
    uncorrected ones and the late/skipped counts beside them."""
    rows = []
    for load in loads:
        latency = load.get("latency_us") or {}
        uncorrected = load.get("latency_uncorrected_us")
        ratio = load.get("error_rate")
        if ratio is None and load.get("requests") and load.get("errors") is not None:
            ratio = load["errors"] / load["requests"]
        rows.append({
            "name": load["name"], "tool": load.get("tool") or "–", "mode": load.get("mode") or "",
            "target": load.get("target_url") or "–",
            "requests": fmt_num(load.get("requests"), 0), "errors": fmt_num(load.get("errors"), 0),
            "tps": fmt_num(load.get("tps"), 1), "error_pct": fmt_pct(ratio),
            "error_bad": bool(ratio), "duration": fmt_num(load_elapsed_s(load), 1),
            "latency_ms": [fmt_ms(latency.get(key)) for _, key in _LATENCY_KEYS],
            "latency_uncorrected_ms": None if uncorrected is None else [
                fmt_ms(uncorrected.get(key)) for _, key in _LATENCY_KEYS],
            "late_skipped": None if load.get("late") is None else
            f"late {fmt_num(load.get('late'), 0)}, skipped {fmt_num(load.get('skipped'), 0)}",
        })
    return rows


def load_charts(load: dict[str, Any], fault_windows: list[dict[str, Any]],
                axis: TimeAxis | None = None) -> dict[str, Any]:
    """The TPS and latency charts of one load: ``{"name", "tps_svg", "latency_svg", "note"}``.

    With the run's ``axis`` the x axis is the run's (points at ``start_epoch_s + t_s``);
    without it, seconds since the load's own start.
    """
    series = sorted(load.get("series") or [], key=lambda point: point["t_s"])
    start = load.get("start_epoch_s")
    note = ""
    x_range: tuple[float, float] | None
    if start is None and fault_windows:
        note = "Fault windows are not shaded: this load has no start_epoch_s."
    if axis is not None and start is not None:
        offset, x_range, x_label = start - axis.origin_epoch_s, axis.x_range, axis.label
        windows = axis.windows(fault_windows)
    else:
        x_high = max([load.get("duration_s") or 0.0] + [p["t_s"] for p in series])
        offset, x_label = 0.0, "time since load start (s)"
        x_range = (0.0, float(x_high)) if x_high > 0 else None
        windows = [] if start is None else TimeAxis(start, (0.0, 1.0), x_label).windows(
            fault_windows)
    tps = [Series("requests/s", [(offset + p["t_s"], p.get("requests")) for p in series],
                  PALETTE[0]),
           Series("errors/s", [(offset + p["t_s"], p.get("errors")) for p in series],
                  PALETTE[2])]
    latency = [Series(label, [(offset + p["t_s"], None if p.get(key) is None else p[key] / 1000)
                              for p in series], colour)
               for label, key, colour in (("p50", "p50_us", PALETTE[0]),
                                          ("p90", "p90_us", PALETTE[1]),
                                          ("p99", "p99_us", PALETTE[2]))]
    return {
        "name": load["name"], "note": note, "points": len(series),
        "tps_svg": line_chart(tps, title=f"Throughput per second — {load['name']}",
                              x_label=x_label, y_label="requests/s", windows=windows,
                              x_range=x_range),
        "latency_svg": line_chart(latency, title=f"Latency percentiles per second — "
                                                 f"{load['name']}",
                                  x_label=x_label, y_label="latency (ms)", windows=windows,
                                  x_range=x_range),
    }


def status_rows(loads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses by HTTP status per load; status ``0`` is "no response"."""
    rows = []
    for load in loads:
        counts = load.get("status_counts") or {}
        total = sum(counts.values())
        for status, count in sorted(counts.items()):
            rows.append({"load": load["name"],
                         "status": "0 (no response)" if status == "0" else status,
                         "count": fmt_num(count, 0),
                         "share": fmt_pct(count / total if total else None),
                         "error": count > 0 and not status.startswith(("2", "3"))})
    return rows


def flag_rows(sidecars: dict[str, Any]) -> list[dict[str, Any]]:
    """Response-flag counts per sidecar and cluster; flag ``-`` means none."""
    rows = []
    for pod, sidecar in sorted(sidecars.items()):
        for cluster, by_flag in sorted((sidecar.get("response_flags") or {}).items()):
            total = sum(by_flag.values())
            for flag, count in sorted(by_flag.items(), key=lambda kv: (kv[0] != "-", kv[0])):
                meaning = ", ".join(FLAG_MEANINGS.get(f, "unknown flag") for f in flag.split(","))
                rows.append({"pod": pod, "cluster": cluster, "flag": flag, "meaning": meaning,
                             "count": fmt_num(count, 0),
                             "share": fmt_pct(count / total if total else None),
                             "bad": flag != "-" and count > 0})
    return rows


def activity_rows(activities: list[dict[str, Any]], started_at: Any) -> list[dict[str, Any]]:
    """Activities in start order, with their offset from the run start."""
    run_start = _parse_iso(started_at)

    def offset(item: dict[str, Any]) -> str:
        start = _parse_iso(item.get("start"))
        if start is None or run_start is None:
            return "–"
        return f"+{(start - run_start).total_seconds():.1f} s"

    ordered = sorted(activities, key=lambda a: (_parse_iso(a.get("start")) is None,
                                                str(a.get("start") or "")))
    return [{"name": a["name"], "status": a.get("status") or "–", "offset": offset(a),
             "start": a.get("start") or "–", "end": a.get("end") or "–",
             "duration": fmt_num(a.get("duration_s"), 2),
             "error": a.get("error") or "", "failed": a.get("status") == "failed"}
            for a in ordered]


def topology_view(topology: dict[str, Any]) -> dict[str, Any]:
    """Nodes with their pods (pods on unknown nodes under ``unplaced``) and services."""
    nodes = [{"name": n["name"], "ip": n.get("ip"), "pod_cidr": n.get("pod_cidr"), "pods": []}
             for n in topology.get("nodes") or []]
    by_name = {node["name"]: node for node in nodes}
    unplaced: list[dict[str, Any]] = []
    for pod in topology.get("pods") or []:
        row = {"name": pod["name"], "namespace": pod.get("namespace"), "ip": pod.get("ip"),
               "workload": pod.get("workload"), "meshed": bool(pod.get("meshed"))}
        target = by_name.get(pod.get("node"))
        (target["pods"] if target else unplaced).append(row)
    services = [{"name": svc["name"], "namespace": svc.get("namespace"),
                 "cluster_ip": svc.get("cluster_ip"),
                 "ports_text": ", ".join(f"{p.get('port', '?')}/{p.get('name', '')}".rstrip("/")
                                         for p in svc.get("ports") or [])}
                for svc in topology.get("services") or []]
    return {"nodes": nodes, "unplaced": unplaced, "services": services}


def verdict_rows(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Verdicts with every column present (missing text becomes "–"); ``result`` is
    ``PASS``, ``FAIL`` or ``NOT EVALUATED`` (``passed`` null: a dry run), ``badge`` its CSS
    class."""
    return [{"check": v["check"], "passed": v.get("passed"),
             "result": {True: "PASS", False: "FAIL"}.get(v.get("passed"), "NOT EVALUATED"),
             "badge": {True: "pass", False: "fail"}.get(v.get("passed"), "plain"),
             "subject": v.get("subject") or "–",
             "expected": v.get("expected") or "–", "observed": v.get("observed") or "–",
             "message": v.get("message") or ""} for v in verdicts]


def fault_rows(fault_windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fault windows with UTC times and duration (open windows say "still active")."""
    rows = []
    for w in fault_windows:
        end = w.get("end_epoch_s")
        params = w.get("params") or {}
        rows.append({"name": w["name"], "start": fmt_epoch(w["start_epoch_s"]),
                     "params": ", ".join(f"{k}={v}" for k, v in params.items()
                                         if v not in (None, {}, [])) or "–",
                     "end": fmt_epoch(end) if end is not None else "still active",
                     "duration": fmt_num(end - w["start_epoch_s"], 1) if end is not None
                     else "–"})
    return rows


def observation_rows(observations: dict[str, Any], max_chars: int = 400) -> list[dict[str, Any]]:
    """One row per observation: name, kind, time and a compact summary (a socket snapshot is
    summarised as counts per state; anything else as truncated JSON)."""
    rows = []
    for name, obs in observations.items():
        data = obs.get("data")
        if obs.get("kind") == "sockets" and isinstance(data, list):
            states: dict[str, int] = {}
            for sock in data:
                if isinstance(sock, dict):
                    states[str(sock.get("state"))] = states.get(str(sock.get("state")), 0) + 1
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(states.items())) or "no sockets"
        else:
            summary = json.dumps(data, default=str, sort_keys=True)
        if len(summary) > max_chars:
            summary = summary[:max_chars] + " …"
        rows.append({"name": name, "kind": obs.get("kind") or "–",
                     "at": obs.get("at") or "–", "summary": summary})
    return rows


def _env_view(env: dict[str, Any], faults: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": env.get("name") or "–", "kernel": env.get("kernel") or "not collected",
            "sysctls": None if env.get("sysctls") is None else sorted(env["sysctls"].items()),
            "fault_settings": fault_settings(faults)}


def _series_view(journal: dict[str, Any], series: RunSeries, axis: Any, order: list[str]
                 ) -> dict[str, Any] | None:
    """The collector-series section on the run's time ``axis``; None when the run has no
    ``collectors``."""
    collectors = journal.get("collectors")
    if collectors is None or axis is None:
        return None
    windows = axis.windows(journal.get("fault_windows") or [])
    return {"interval_s": fmt_num(collectors.get("interval_s"), 2),
            "started": fmt_epoch(collectors.get("started_epoch_s")),
            "ended": fmt_epoch(collectors.get("ended_epoch_s"))
            if collectors.get("ended_epoch_s") is not None else "never stopped",
            "flags": flag_charts(series, axis, windows, order),
            "tcp": tcp_charts(series, axis, windows, order),
            "sockets": socket_charts(series, axis, windows, order),
            "containers": container_charts(series, axis, windows, order),
            "dns": dns_charts(series, axis, windows),
            "conntrack": conntrack_charts(series, axis, windows,
                                          collectors.get("interval_s") or 1.0),
            "gaps": gap_rows(series, axis), "notes": series.notes}


def build_view(journal: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    """Everything the report template shows, from a validated journal and its run directory.

    Args:
        journal: a journal that passed :func:`meshlab.report.journal.load_journal`.
        run_dir: the run directory holding the series files and raw data (None: the journal
            alone; collector series and raw links are then absent).

    Returns:
        A dict of template values; missing sections are None.
    """
    loads = journal.get("loads")
    faults = journal.get("fault_windows") or []
    sidecars = journal.get("sidecars")
    env = journal.get("env")
    verdicts = journal.get("verdicts")
    series = (load_series(run_dir, journal.get("collectors"), lambda s: ".tcp_stats." in s)
              if run_dir is not None else RunSeries())
    axis = run_axis(journal, series)
    order = [pod for pod, _ in path_order(journal)]
    return {
        "run": {"name": journal.get("name") or journal["run_id"], "run_id": journal["run_id"],
                "status": journal["status"], "started_at": journal.get("started_at") or "–",
                "ended_at": journal.get("ended_at") or "–",
                "duration": fmt_num(journal.get("duration_s"), 1),
                "schema": journal["schema"]},
        "banner": banner(journal),
        "loads": None if loads is None else load_rows(loads),
        "windows": None if loads is None else window_tables(loads, faults, series.accesslog),
        "charts": None if loads is None else [load_charts(load, faults, axis) for load in loads],
        "axis_label": axis.label if axis else "time since load start (s)",
        "series": _series_view(journal, series, axis, order),
        "statuses": None if loads is None else status_rows(loads),
        "faults": None if journal.get("fault_windows") is None else fault_rows(faults),
        "verdicts": None if verdicts is None else verdict_rows(verdicts),
        "observations": observation_rows(journal.get("observations") or {}),
        "notes": [str(n) for n in journal.get("notes") or []],
        "verdicts_failed": sum(1 for v in verdicts or [] if v.get("passed") is False),
        "verdicts_not_evaluated": sum(1 for v in verdicts or [] if v.get("passed") is None),
        "flags": None if sidecars is None else flag_rows(sidecars),
        "flag_meanings": FLAG_MEANINGS,
        "hops": hop_view(journal),
        "access_logs": None if sidecars is None else [
            {"pod": pod, "lines": s.get("access_log_sample")}
            for pod, s in sorted(sidecars.items())],
        "activities": (None if journal.get("activities") is None
                       else activity_rows(journal["activities"], journal.get("started_at"))),
        "topology": None if journal.get("topology") is None else topology_view(
            journal["topology"]),
        "env": None if env is None else _env_view(env, faults),
        "prometheus": prometheus_view(journal.get("prometheus")),
        "raw": [] if run_dir is None else raw_files(run_dir),
    }
