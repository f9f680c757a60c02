"""Summary numbers, target verdicts and the markdown of a ``benchmarks/load.py`` run.

Units: rates in requests/s, CPU in cores (CPU seconds per wall second of the steady window),
latencies in ms (from the runners' µs HDR percentiles).
"""

from __future__ import annotations

import statistics

from _common import machine_line
from _common import verdict as _verdict

TARGETS = {
    "meshlab_vs_locust_rps_per_process": 1.0,
    "rate_error_pct": 1.0,
    "latency_error_pct": 10.0,
}
BASELINE = "locust"
MESHLAB = "meshlab closed-loop"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _throughput(doc: dict) -> list[dict]:
    rows = []
    for name, rec in doc.get("throughput", {}).items():
        rounds = rec["rounds"]
        rows.append({
            "generator": name,
            "rps": _median([r["rps"] for r in rounds]),
            "server_rps": _median([r["steady"].get("server_rps") for r in rounds]),
            "cpu_cores": _median([r["steady"].get("cpu_cores") for r in rounds]),
            "requests_per_cpu_s": _median([r["steady"].get("requests_per_cpu_s")
                                           for r in rounds]),
            "errors": sum(r["errors"] for r in rounds),
            "late": sum(r.get("late") or 0 for r in rounds) if "late" in rounds[0] else None,
        })
    base = next((r for r in rows if r["generator"] == BASELINE), None)
    for r in rows:
        r["ratio_vs_locust"] = round(r["rps"] / base["rps"], 3) if base and base["rps"] else None
        r["ratio_per_cpu_s_vs_locust"] = (
            round(r["requests_per_cpu_s"] / base["requests_per_cpu_s"], 3)
            if base and base["requests_per_cpu_s"] and r["requests_per_cpu_s"] else None)
    return rows


def _rate(doc: dict) -> list[dict]:
    rows = []
    for rec in doc.get("rate", []):
        target = rec["target_rps"]
        achieved = rec["requests"] / rec["duration_s"]
        server = rec["steady"].get("server_rps")
        errs = [abs(achieved / target - 1) * 100]
        if server:
            errs.append(abs(server / target - 1) * 100)
        inner = rec["per_second"][1:-1]  # whole seconds of steady sending (not ramp, drain)
        worst = max((abs(n / target - 1) * 100 for n in inner), default=None)
        rows.append({"target_rps": target, "achieved_rps": round(achieved, 1),
                     "worst_second_error_pct": None if worst is None else round(worst, 2),
                     "server_rps": server, "tps": rec["tps"], "late": rec["late"],
                     "skipped": rec["skipped"], "errors": rec["errors"],
                     "cpu_cores": rec["steady"].get("cpu_cores"),
                     "p99_ms": _ms(rec["latency_us"].get("p99")),
                     "error_pct": round(max(errs), 3)})
    return rows


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def _latency(doc: dict) -> list[dict]:
    rec = doc.get("latency")
    if not rec:
        return []
    rows = []
    for key in ("p50", "p99", "p999"):
        expected, measured = rec["expected_us"][key], rec["corrected_us"][key]
        rows.append({"percentile": key, "computed_ms": _ms(expected),
                     "corrected_ms": _ms(measured),
                     "uncorrected_ms": _ms((rec["uncorrected_us"] or {}).get(key)),
                     "error_pct": (round(abs(measured / expected - 1) * 100, 2)
                                   if key != "p50" else None)})
    return rows


def summarise(doc: dict) -> dict:
    """Tables and target verdicts of the run record.

    Returns:
        ``{"throughput": [row], "rate": [row], "latency": [row], "targets": {name: {"value",
        "target", "met"}}}``; a target whose part did not run is absent.
    """
    out = {"throughput": _throughput(doc), "rate": _rate(doc), "latency": _latency(doc),
           "targets": {}}
    t = out["targets"]
    mesh = next((r for r in out["throughput"] if r["generator"] == MESHLAB), None)
    if mesh:
        t["meshlab_vs_locust_rps_per_process"] = _verdict(
            mesh["ratio_vs_locust"], TARGETS["meshlab_vs_locust_rps_per_process"],
            higher_is_better=True)
        t["meshlab_vs_locust_requests_per_cpu_s"] = _verdict(
            mesh["ratio_per_cpu_s_vs_locust"], TARGETS["meshlab_vs_locust_rps_per_process"],
            higher_is_better=True)
    for r in out["rate"]:
        t[f"rate_error_pct@{r['target_rps']:g}"] = _verdict(r["error_pct"],
                                                             TARGETS["rate_error_pct"])
    for r in out["latency"]:
        if r["error_pct"] is not None:
            t[f"corrected_{r['percentile']}_error_pct"] = _verdict(
                r["error_pct"], TARGETS["latency_error_pct"])
    return out


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


def markdown(doc: dict) -> str:
    """The human summary written to ``load-latest.md``."""
    s, m, st = doc["summary"], doc["machine"], doc["settings"]
    lines = [f"# Load engine benchmark ({doc['started']}, {doc['elapsed_s']} s)", "",
             machine_line(m),
             (f"Server: {st['server']}, pinned to core {st['server_cpu']}; every generator one "
              f"process pinned to core {st['client_cpu']}, {st['conns']} connections; "
              f"throughput runs {st['throughput_s']:g} s × {st['rounds']} rounds (median, order "
              f"rotated), rate and latency runs {st['duration_s']:g} s. Own req/s is the "
              f"generator's own statistic; server req/s and CPU are over the steady window "
              f"(nginx stub_status, /proc utime+stime). Error % of a rate row: the larger of "
              f"achieved and server-side vs target; late = sent > 1 ms after its intended "
              f"start.")]
    if s["throughput"]:
        lines += ["", "## Throughput per load process", "",
                  ("| generator | req/s per process (own) | server req/s | CPU (cores) "
                   "| req per CPU-s | ratio vs Locust | ratio per CPU-s |"),
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['generator']} | {_cell(r['rps'])} | {_cell(r['server_rps'])} | "
                  f"{_cell(r['cpu_cores'])} | {_cell(r['requests_per_cpu_s'])} | "
                  f"{_cell(r['ratio_vs_locust'])} | {_cell(r['ratio_per_cpu_s_vs_locust'])} |"
                  for r in s["throughput"]]
    if s["rate"]:
        lines += ["", "## Open-loop rate accuracy (nginx)", "",
                  ("| target rps | achieved (requests / duration) | server req/s (steady) "
                   "| worst 1-s error % | late | skipped | errors | client CPU "
                   "| corrected p99 ms | error % |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['target_rps']:g} | {r['achieved_rps']} | {_cell(r['server_rps'])} | "
                  f"{_cell(r['worst_second_error_pct'])} | "
                  f"{r['late']} | {r['skipped']} | {r['errors']} | {_cell(r['cpu_cores'])} | "
                  f"{_cell(r['p99_ms'])} | {r['error_pct']} |" for r in s["rate"]]
    if s["latency"]:
        lat = doc["latency"]
        lines += ["", (f"## Latency accuracy (stall server: {lat['stall_s']:g} s pause at "
                       f"request {lat['stall_at']}, {lat['rate_rps']:g} rps constant, "
                       f"{lat['duration_s']:g} s, {lat['connections']} connections)"), "",
                  ("Computed: the exact corrected distribution of the schedule with zero service "
                   "time; corrected/uncorrected: meshlab's open-loop result (from intended start "
                   "/ from actual send)."), "",
                  "| percentile | computed ms | corrected ms | uncorrected ms | error % |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['percentile']} | {r['computed_ms']} | {r['corrected_ms']} | "
                  f"{_cell(r['uncorrected_ms'])} | {_cell(r['error_pct'])} |"
                  for r in s["latency"]]
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for name, v in s["targets"].items():
        goal = f"≥ {v['target']}" if name.startswith("meshlab_vs") else f"≤ {v['target']}"
        lines.append(f"| {name} | {_cell(v['value'])} | {goal} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"
