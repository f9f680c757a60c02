"""Summary numbers, target verdicts and the markdown table of a ``sidecar.py`` run.

Units: latencies in ms (from the loadgen's µs HDR percentiles), CPU in vCPU per 1000 rps
(``proxy CPU seconds × 1000 / requests`` over the measured fixed-rate window), RSS in MB.
"""

from __future__ import annotations

import statistics

from _common import machine_line
from _common import verdict as _verdict

#: Issue #13's targets (the ratio's stretch goal is 0.5).
TARGETS = {
    "added_p90_ms": 0.5,
    "added_p99_ms": 1.0,
    "max_rps_per_core_vs_nginx": 0.35,
    "vcpu_per_1000rps_per_sidecar": 0.15,
    "rss_mb_per_sidecar": 25.0,
}
PCTS = ("p50", "p90", "p99")


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


def _row(mode: str, rec: dict, direct: dict) -> dict:
    """One round's numbers of one mode (``direct``: that round's direct latency µs)."""
    fixed, mx = rec["fixed"], rec["max"]
    lat = fixed["latency_us"]
    row: dict = {f"{p}_ms": _ms(lat[p]) for p in PCTS}
    row["achieved_rps"] = round(fixed["achieved_rps"], 1)
    row["errors"] = fixed["errors"]
    if mode != "direct" and direct:
        row.update({f"added_{p}_ms": _ms(lat[p] - direct[p]) for p in PCTS})
    row["max_rps"] = mx["rps"]
    row["max_rps_per_proxy_core"] = mx.get("rps_per_proxy_core")
    cpu = fixed.get("proxy_cpu_s", {})
    if cpu:
        per = {r: round(v * 1000 / fixed["requests"], 4) for r, v in cpu.items()}
        row["vcpu_per_1000rps"] = per
        row["vcpu_per_1000rps_sum"] = round(sum(per.values()), 4)
        row["vcpu_per_1000rps_max"] = max(per.values())
    rss = fixed.get("rss_kb", {})
    if rss:  # the largest process of each proxy (the nginx worker, the sidecar)
        row["rss_mb"] = {r: round(max(v.values(), default=0) / 1024, 1) for r, v in rss.items()}
        row["rss_mb_max"] = max(row["rss_mb"].values())
    return row


def _spread(values: list) -> dict:
    """``{"median", "min", "max"}`` of the rounds' values (None when a round lacks it)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(vals), 4), "min": min(vals), "max": max(vals)}


def summarise(doc: dict) -> dict:
    """Per-mode medians and min–max over the rounds, and the verdict of every target.

    Args:
        doc: the run record (``modes`` → mode → ``rounds`` → ``[{"fixed", "max"}]``; round
            ``i`` of every mode ran in the same rotation, so added latency compares a mode with
            the direct run of its own round).

    Returns:
        ``{"modes": {mode: {metric: {"median", "min", "max"}}}, "targets": {name: verdict}}``;
        targets are judged on medians.
    """
    out: dict = {"modes": {}, "targets": {}}
    modes = doc["modes"]
    direct_rounds = [r["fixed"]["latency_us"] for r in modes.get("direct", {}).get("rounds", [])]
    for mode, rec in modes.items():
        rows = [_row(mode, r, direct_rounds[i] if i < len(direct_rounds) else {})
                for i, r in enumerate(rec["rounds"])]
        keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
        agg = {k: _spread([row.get(k) for row in rows]) for k in keys}
        for k in ("vcpu_per_1000rps", "rss_mb"):
            if k in rows[0]:
                agg[k] = {role: _spread([row[k].get(role) for row in rows]) for role in rows[0][k]}
        agg["rounds"] = len(rows)
        out["modes"][mode] = agg
    t = out["targets"]
    ngx = out["modes"].get("nginx")
    for mode, m in out["modes"].items():
        if not mode.startswith("meshlab"):
            continue
        for p in ("p90", "p99"):
            if f"added_{p}_ms" in m:
                t[f"{mode}: added_{p}_ms"] = _verdict(m[f"added_{p}_ms"]["median"],
                                                      TARGETS[f"added_{p}_ms"])
        mine = m["max_rps_per_proxy_core"]["median"]
        if ngx and mine and ngx["max_rps_per_proxy_core"]["median"]:
            ratio = round(mine / ngx["max_rps_per_proxy_core"]["median"], 3)
            t[f"{mode}: max_rps_per_core_vs_nginx"] = _verdict(
                ratio, TARGETS["max_rps_per_core_vs_nginx"], higher_is_better=True)
        if "vcpu_per_1000rps_max" in m:
            t[f"{mode}: vcpu_per_1000rps_per_sidecar"] = _verdict(
                m["vcpu_per_1000rps_max"]["median"], TARGETS["vcpu_per_1000rps_per_sidecar"])
        if "rss_mb_max" in m:
            t[f"{mode}: rss_mb_per_sidecar"] = _verdict(m["rss_mb_max"]["median"],
                                                        TARGETS["rss_mb_per_sidecar"])
    return out


def _cell(v: dict | None, digits: int = 3) -> str:
    """``median [min–max]``."""
    if not v or v.get("median") is None:
        return "-"
    return (f"{round(v['median'], digits)} [{round(v['min'], digits)}–"
            f"{round(v['max'], digits)}]")


def markdown(doc: dict) -> str:
    """The human summary written to ``sidecar-latest.md``."""
    s, m, st = doc["summary"], doc["machine"], doc["settings"]
    lines = [f"# Sidecar benchmark ({doc['started']})", "",
             machine_line(m),
             (f"Load: {st['rate_rps']:.0f} rps fixed rate (open loop, latency from scheduled send "
             f"time), {st['conns']} connections, {st['response_bytes']} B responses, "
             f"{st['warmup_s']:.0f} s warm-up + {st['duration_s']:.0f} s; closed loop wrk "
             f"{st['max_s']} s. Proxies pinned to core {st['proxy_cpu']}, client and app "
             f"({st['app']}) to core {st['client_and_app_cpu']}. Access logs: "
             f"{st['access_logs']}."), "",
             (f"Each mode ran {st.get('rounds', 1)} rounds in rotated order; cells are the median "
              "[min–max] over the rounds."), "",
             ("| mode | p50 ms | p90 ms | p99 ms | added p90 ms | added p99 ms | max rps (1 core) "
              "| rps per proxy CPU-s | vCPU/1000 rps (A+B) | RSS MB (largest proxy) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in s["modes"].items():
        lines.append(f"| {mode} | {_cell(r['p50_ms'])} | {_cell(r['p90_ms'])} | "
                     f"{_cell(r['p99_ms'])} | {_cell(r.get('added_p90_ms'))} | "
                     f"{_cell(r.get('added_p99_ms'))} | {_cell(r['max_rps'], 0)} | "
                     f"{_cell(r.get('max_rps_per_proxy_core'), 0)} | "
                     f"{_cell(r.get('vcpu_per_1000rps_sum'))} | {_cell(r.get('rss_mb_max'), 1)} |")
    lines += ["", "| target (median) | value | goal | met |", "|---|---|---|---|"]
    for name, v in s["targets"].items():
        goal = f"≥ {v['target']}" if name.endswith("vs_nginx") else f"≤ {v['target']}"
        lines.append(f"| {name} | {v['value']} | {goal} | {'yes' if v['met'] else 'NO'} |")
    prof = doc.get("profile_sidecar_a")
    if prof:
        lines += ["", (f"Sidecar A hot spots (py-spy, self time, {prof['samples']} samples, "
                  f"µs of CPU per request):"), "", "| function | self % | µs/request |",
                  "|---|---|---|"]
        lines += [f"| `{f['frame']}` | {f['self_pct']} | {f['us_per_request']} |"
                  for f in prof["top_self"]]
    return "\n".join(lines) + "\n"
