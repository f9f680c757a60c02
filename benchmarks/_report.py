"""Summary numbers, target verdicts and the markdown table of a ``sidecar.py`` run.

Units: latencies in ms (from the loadgen's µs HDR percentiles), CPU in vCPU per 1000 rps
(``proxy CPU seconds × 1000 / requests`` over the measured fixed-rate window), RSS in MB.
"""

from __future__ import annotations

from _common import machine_line
from _common import verdict as _verdict

TARGETS = {
    "added_p90_ms": 0.25,
    "added_p99_ms": 0.35,
    "max_rps_per_core_vs_nginx": 0.5,
    "vcpu_per_1000rps_per_sidecar": 0.15,
    "rss_mb_per_sidecar": 25.0,
}
PCTS = ("p50", "p90", "p99")


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


def summarise(doc: dict) -> dict:
    """Per-mode latency/CPU/RSS/throughput and the verdict of every target.

    Args:
        doc: the run record (``modes`` → ``direct|meshlab|nginx`` → ``fixed``/``max``).

    Returns:
        ``{"modes": {mode: {...}}, "targets": {name: {"value", "target", "met"}}}``.
    """
    out: dict = {"modes": {}, "targets": {}}
    modes = doc["modes"]
    direct = modes.get("direct", {}).get("fixed", {}).get("latency_us", {})
    for mode, rec in modes.items():
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
        rss = fixed.get("rss_kb", {})
        if rss:  # the largest process of each proxy (the nginx worker, the sidecar)
            row["rss_mb"] = {r: round(max(v.values(), default=0) / 1024, 1)
                             for r, v in rss.items()}
        out["modes"][mode] = row
    mesh, ngx = out["modes"].get("meshlab"), out["modes"].get("nginx")
    if mesh:
        t = out["targets"]
        for p in ("p90", "p99"):
            if f"added_{p}_ms" in mesh:
                t[f"added_{p}_ms"] = _verdict(mesh[f"added_{p}_ms"], TARGETS[f"added_{p}_ms"])
        if ngx and ngx.get("max_rps_per_proxy_core") and mesh.get("max_rps_per_proxy_core"):
            ratio = round(mesh["max_rps_per_proxy_core"] / ngx["max_rps_per_proxy_core"], 3)
            t["max_rps_per_core_vs_nginx"] = _verdict(
                ratio, TARGETS["max_rps_per_core_vs_nginx"], higher_is_better=True)
        if "vcpu_per_1000rps" in mesh:
            t["vcpu_per_1000rps_per_sidecar"] = _verdict(
                max(mesh["vcpu_per_1000rps"].values()), TARGETS["vcpu_per_1000rps_per_sidecar"])
        if "rss_mb" in mesh:
            t["rss_mb_per_sidecar"] = _verdict(max(mesh["rss_mb"].values()),
                                               TARGETS["rss_mb_per_sidecar"])
    return out


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
             ("| mode | p50 ms | p90 ms | p99 ms | added p50/p90/p99 ms | max rps (1 core) "
             "| rps per proxy CPU-s | vCPU/1000 rps (A+B) | RSS MB (A, B) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in s["modes"].items():
        added = "/".join(str(r.get(f"added_{p}_ms", "-")) for p in PCTS) if mode != "direct" \
            else "-"
        rss = ", ".join(str(v) for v in r.get("rss_mb", {}).values()) or "-"
        lines.append(f"| {mode} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {added} | "
                     f"{r['max_rps']:.0f} | {r.get('max_rps_per_proxy_core') or '-'} | "
                     f"{r.get('vcpu_per_1000rps_sum', '-')} | {rss} |")
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for name, v in s["targets"].items():
        goal = f"≥ {v['target']}" if name == "max_rps_per_core_vs_nginx" else f"≤ {v['target']}"
        lines.append(f"| {name} | {v['value']} | {goal} | {'yes' if v['met'] else 'NO'} |")
    prof = doc.get("profile_sidecar_a")
    if prof:
        lines += ["", (f"Sidecar A hot spots (py-spy, self time, {prof['samples']} samples, "
                  f"µs of CPU per request):"), "", "| function | self % | µs/request |",
                  "|---|---|---|"]
        lines += [f"| `{f['frame']}` | {f['self_pct']} | {f['us_per_request']} |"
                  for f in prof["top_self"]]
    return "\n".join(lines) + "\n"
