"""Soak: 30 minutes of open-loop load through the 4-hop chain with every observer on.

``.venv/bin/python benchmarks/soak.py [--minutes 30] [--rate auto|N] [--warmup-min 2]`` (root).
Writes ``benchmarks/results/soak-<date>.json`` and ``benchmarks/results/soak-latest.md``.

The chain is :mod:`lab_floor`'s (netshoot → L1 sidecar → L1 app ``-M`` → L1 sidecar → L2 sidecar
→ L2 app), with the lab's Prometheus and the collectors at 1 s, as a suite runs them. The load is
one open-loop run (constant arrivals over 16 keep-alive connections, latency from each request's
intended start) for the whole soak; its per-second HDR histograms are merged into minutes after
the run. Once a minute a sampler thread (:mod:`_soak_sample`) records, for every pod, the RSS
(kB), open fds and CPU seconds of its sidecar (the uid-1337 processes) and of its app (the
rest), the conntrack entries of every lab namespace (``conntrack -C``, pods and nodes), and the
CPU of Prometheus, of the runner and of the machine (busy, softirq, steal) with its biggest other
user, so a change in latency can be set beside where the cores' time went (``cpu_per_minute``,
and ``cpu_thirds``: the first and the last third after the warm-up, as the drift compares).

Rate: the issue's 1000 rps when it is at most half the chain's measured maximum (the TPS of a
15 s open-loop run offered 3000 rps over the same 16 connections, before the soak); otherwise
50 % of the measured maximum, and the report says so. A chain run near its limit only measures
its queue: at 1000 rps against a 1290 TPS maximum (77 %), the per-minute p50 swung from 2 ms
to 2.8 s and 57 % of the requests started late (``soak-20261207T115219Z.json``).

Pass (after the warm-up minutes): 0 errors; every process group's RSS at the last minute < 5 %
above its RSS at the end of the warm-up; no fd growth (the median fd count of the last third of
the samples not above that of the first third); p99 drift ≤ 20 %: the median of the last third of
the minutes' p99 against the median of the first third. Every non-2xx the sidecars logged is
counted by pod, cluster, code, ``response_flags`` and details (``errors_by_cause``), with the first
:data:`ERROR_SAMPLE` records kept, so an error says where it came from. The client pod's
processes are the load generator (it keeps every second's histogram for the whole run):
reported, not judged.

Keep-alive: by default the apps keep fortio's 30 s ``-server-idle-timeout`` while the sidecars'
inbound pools keep idle connections for Envoy's 1 h, so once in a while a sidecar reuses a pooled
connection the app is closing at that moment: a ``503 UC`` (the keep-alive race,
``soak-20261207T133854Z.json``), which real istio-proxy shows too. ``--app-idle-timeout-s S``
runs the apps with ``-server-idle-timeout S`` (an overlay of the two fortio-server
StatefulSets): with S above the pool's 1 h the proxy is always the side that closes an idle
connection first, the usual rule for an upstream behind a proxy, and the soak then measures
everything but that race.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import bench_run, machine_info, verdict, write_results
from _soak_sample import MinuteSampler, cpu_per_minute, cpu_thirds, error_records

from meshlab.envs.local.lab import DEFAULT_MANIFESTS, LocalEnv
from meshlab.experiment import Run
from meshlab.journal import RunJournal
from meshlab.load import hdr

URL = "http://fortio-server:8070/echo?size=100"
CONNECTIONS = 16
ISSUE_RATE = 1000
HEADROOM = 2.0  # the issue's rate is used when the measured max is at least this much above
OFFERED_MAX = 3000  # rps offered to measure the maximum (above ISSUE_RATE * HEADROOM)
APP_MANIFESTS = ("fortio-server.yaml", "fortio-server-l2.yaml")  # the two fortio servers
TARGETS = {"errors": 0, "rss_growth_pct": 5.0, "fd_growth": 0, "p99_drift_pct": 20.0}


def per_minute(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The load's per-second points merged into minutes: ``[{"minute", "requests", "errors",
    "p50_ms", "p99_ms", "max_ms"}]`` (exact: the seconds' HDR histograms are added)."""
    out = []
    for m in range((max((p["t_s"] for p in series), default=-1) // 60) + 1):
        points = [p for p in series if p["t_s"] // 60 == m]
        merged = hdr.merge(p["hdr"] for p in points if p.get("hdr"))
        pct = hdr.percentiles(merged)
        out.append({"minute": m, "requests": sum(p["requests"] for p in points),
                    "errors": sum(p["errors"] for p in points),
                    **{f"{k}_ms": None if pct.get(k) is None else round(pct[k] / 1000, 3)
                       for k in ("p50", "p99", "max")}})
    return out


def _thirds(values: list[float]) -> tuple[float, float] | None:
    """Medians of the first and the last third of ``values`` (None: fewer than 3)."""
    third = len(values) // 3
    if third == 0:
        return None
    return statistics.median(values[:third]), statistics.median(values[-third:])


def growth(samples: list[dict[str, Any]], warmup_min: int) -> dict[str, dict[str, Any]]:
    """Per process group: RSS at the end of the warm-up and at the last sample with the growth
    in %, and the fd count's median over the first and the last third of the samples after the
    warm-up with their difference (a connection opened or closed at one sample is not a
    trend)."""
    after = [s for s in samples if s["minute"] >= warmup_min] or samples
    base, last = after[0], after[-1]
    out = {}
    for key, b in base["procs"].items():
        e = last["procs"].get(key, {"rss_kb": 0, "fds": 0})
        fds = _thirds([s["procs"].get(key, {}).get("fds", 0) for s in after])
        f0, f1 = fds or (b["fds"], e["fds"])
        out[key] = {"rss_kb_warm": b["rss_kb"], "rss_kb_end": e["rss_kb"],
                    "rss_growth_pct": round(100.0 * (e["rss_kb"] - b["rss_kb"])
                                            / max(b["rss_kb"], 1), 2),
                    "fds_warm": f0, "fds_end": f1, "fd_growth": f1 - f0,
                    "judged": not key.endswith("/client")}
    return out


def p99_drift_pct(minutes: list[dict[str, Any]], warmup_min: int) -> float | None:
    """Median p99 of the last third of the post-warm-up minutes against the first third, %."""
    thirds = _thirds([m["p99_ms"] for m in minutes[warmup_min:] if m["p99_ms"] is not None
                      and m["requests"] > 0])
    if thirds is None:
        return None
    return round(100.0 * (thirds[1] - thirds[0]) / thirds[0], 1)


def _ranks(values: list[float]) -> list[float]:
    """Ranks 0 … n-1 of ``values``, ties given their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def p99_vs_machine(minutes: list[dict[str, Any]],
                   cpu: list[dict[str, Any]]) -> dict[str, float | None]:
    """Spearman rank correlation of the minutes' p99 with the machine's busy CPU (at a constant
    rate: the CPU a request costs) and with the speed probe's µs (run H only): ``{"host_busy": r,
    "probe_us": r}`` (None: under 3 minutes, or a constant series). Near 1: the p99 follows
    how fast the cores run, which the lab does not set."""
    p99 = {m["minute"]: m["p99_ms"] for m in minutes if m["p99_ms"] is not None}
    out: dict[str, float | None] = {}
    for key in ("host_busy", "probe_us"):
        pairs = [(p99[r["minute"]], r[key]) for r in cpu if key in r and r["minute"] in p99]
        try:
            out[key] = round(statistics.correlation(_ranks([a for a, _ in pairs]),
                                                    _ranks([b for _, b in pairs])), 2)
        except statistics.StatisticsError:
            out[key] = None
    return out


def cost_drift_pct(thirds: dict[str, list[float]]) -> dict[str, float]:
    """From :func:`cpu_thirds`, the change (%) from the first to the last third of the CPU a
    request costs (the rate is constant): ``{"host_busy"|"<pod>/app": %}``, the machine's speed
    as the lab's fixed work sees it, and ``{"<pod>/sidecar_per_app": %}``, the sidecar's CPU
    over its app's: its own efficiency, which a machine that runs slower for both leaves
    unchanged."""
    def pct(a: float, b: float) -> float:
        return round(100.0 * (b - a) / a, 1) if a else 0.0

    out = {k: pct(*v) for k, v in thirds.items() if k == "host_busy" or k.endswith("/app")}
    for key, (a0, a1) in thirds.items():
        side = thirds.get(key[:-len("/app")] + "/sidecar") if key.endswith("/app") else None
        if side and a0 and a1:
            out[key[:-len("/app")] + "/sidecar_per_app"] = pct(side[0] / a0, side[1] / a1)
    return out


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Growth per process group, p99 drift and the target verdicts."""
    warm = doc["settings"]["warmup_min"]
    grow = growth(doc["samples"], warm)
    drift = p99_drift_pct(doc["minutes"], warm)
    judged = [g for g in grow.values() if g["judged"]]
    cpu = cpu_per_minute(doc["samples"])
    return {"growth": grow, "p99_drift_pct": drift, "cpu_per_minute": cpu,
            "cpu_thirds": (thirds := cpu_thirds(cpu, warm)),
            "cost_drift_pct": cost_drift_pct(thirds),
            "p99_vs_machine": p99_vs_machine(doc["minutes"], cpu), "targets": {
        "errors": verdict(doc["load"]["errors"], TARGETS["errors"]),
        "rss_growth_pct": verdict(max(g["rss_growth_pct"] for g in judged),
                                  TARGETS["rss_growth_pct"]),
        "fd_growth": verdict(max(g["fd_growth"] for g in judged), TARGETS["fd_growth"]),
        "p99_drift_pct": verdict(None if drift is None else abs(drift),
                                 TARGETS["p99_drift_pct"])}}


def markdown(doc: dict[str, Any]) -> str:
    """The human summary written to ``soak-latest.md``."""
    st, s, m = doc["settings"], doc["summary"], doc["machine"]
    lines = [f"# Soak ({doc['started']})", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}.",
             (f"Chain: netshoot → L1 sidecar → L1 app (-M) → L1 sidecar → L2 sidecar → L2 app; "
              f"`{URL}`, open loop, {CONNECTIONS} connections, **{st['rate_per_s']} rps for "
              f"{st['minutes']} min**, Prometheus and collectors (1 s) on. {st['rate_reason']}"),
             "", _keepalive_line(st.get("app_idle_timeout_s")),
             "", (f"Load: {doc['load']['requests']} requests, {doc['load']['errors']} errors, "
             f"{doc['load']['tps']} TPS, late {doc['load'].get('late')}, skipped "
             f"{doc['load'].get('skipped')}."), "",
             *_error_lines(doc.get("errors_by_cause") or {}),
             "| minute | requests | errors | p50 ms | p99 ms | max ms | conntrack (all ns) | "
             + " | ".join(f"{k} RSS MB / fds" for k in sorted(doc["samples"][0]["procs"]))
             + " |", "|---" * (7 + len(doc["samples"][0]["procs"])) + "|"]
    by_min = {x["minute"]: x for x in doc["samples"]}
    for row in doc["minutes"]:
        smp = by_min.get(row["minute"] + 1) or {}  # the sample taken at the minute's end
        ct = sum(v for v in smp.get("conntrack", {}).values() if v >= 0) if smp else "-"
        procs = smp.get("procs", {})
        cells = [f"{procs[k]['rss_kb'] / 1024:.1f} / {procs[k]['fds']}" if k in procs else "-"
                 for k in sorted(doc["samples"][0]["procs"])]
        lines.append(f"| {row['minute'] + 1} | {row['requests']} | {row['errors']} | "
                     f"{row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} | {ct} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"Growth from the end of minute {st['warmup_min']} to the end:", "",
              ("| process group | RSS MB warm → end | RSS growth % "
              "| fds (medians, first → last third) |"),
              "|---|---|---|---|"]
    for key, g in s["growth"].items():
        lines.append(f"| {key} | {g['rss_kb_warm'] / 1024:.1f} → {g['rss_kb_end'] / 1024:.1f} "
                     f"| {g['rss_growth_pct']} | {g['fds_warm']} → {g['fds_end']} |")
    lines += ["", (f"p99 drift (median of the last third vs the first third of the minutes "
              f"after the warm-up): {s['p99_drift_pct']} %"), "",
              *_cpu_lines(doc),
              "| target | value | goal | met |", "|---|---|---|---|"]
    for name, v in s["targets"].items():
        goal = "= 0" if name in ("errors",) else f"≤ {v['target']}"
        lines.append(f"| {name} | {v['value']} | {goal} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def _cpu_lines(doc: dict[str, Any]) -> list[str]:
    """The markdown tables of the CPU per minute and by third, in % of one core (none: a
    record from before the sampler kept CPU)."""
    rows, thirds = doc["summary"].get("cpu_per_minute"), doc["summary"].get("cpu_thirds")
    if not rows:
        return []
    p99 = {m["minute"]: m["p99_ms"] for m in doc["minutes"]}
    cols = [k for k in rows[0] if k not in ("minute", "top_other")]
    lines = [("CPU per minute, % of one core (host: the whole machine, "
             f"{doc['machine']['cores']} × 100 %):"), "",
             "| minute | p99 ms | " + " | ".join(cols) + " | top other |",
             "|---" * (len(cols) + 3) + "|"]
    for r in rows:
        top = f"{r['top_other'][0]} {r['top_other'][1]}" if r.get("top_other") else "-"
        lines.append(f"| {r['minute'] + 1} | {p99.get(r['minute'])} | "
                     + " | ".join(str(r.get(k, "-")) for k in cols) + f" | {top} |")
    if thirds:
        lines += ["", "Mean CPU (% of one core), first → last third after the warm-up:", "",
                  "| column | first third | last third |", "|---|---|---|"]
        lines += [f"| {k} | {a} | {b} |" for k, (a, b) in thirds.items()]
    corr = doc["summary"].get("p99_vs_machine") or {}
    probe = ("" if corr.get("probe_us") is None
             else f"; with run H's speed probe: {corr['probe_us']}")
    lines += ["", ("Rank correlation of the minutes' p99 with the machine's busy CPU (a request's "
                   f"CPU cost at this constant rate): {corr.get('host_busy')}{probe}.")]
    cost = doc["summary"].get("cost_drift_pct") or {}
    if cost:
        lines += ["", ("CPU per request, change from the first to the last third (%; the apps' "
                       "and the machine's: how fast the cores ran; `sidecar_per_app`: the "
                       "sidecar's own cost, which machine speed leaves unchanged): "
                       + ", ".join(f"{k} {v:+}" for k, v in cost.items()) + ".")]
    return lines + [""]


def _keepalive_line(idle_s: float | None) -> str:
    """The markdown sentence on the apps' keep-alive idle timeout."""
    if idle_s is None:
        return ("Apps: fortio's default 30 s keep-alive idle timeout, shorter than the "
                "sidecars' 1 h inbound pool idle timeout (the keep-alive race can show as "
                "503 UC).")
    return (f"Apps: `-server-idle-timeout {idle_s:g}s` (`--app-idle-timeout-s`), so the "
            "sidecars' pools (1 h) close idle connections before the apps do.")


def _error_lines(errors: dict[str, Any]) -> list[str]:
    """The markdown lines naming where the non-2xx answers came from (none: no lines)."""
    if not errors.get("by_cause"):
        return []
    head = ("Non-2xx answers in the sidecars' access logs (pod, cluster, code, response_flags, "
            "details; one client error can appear at several hops):")
    return ([head, ""]
            + [f"- {n} × `{cause}`" for cause, n in errors["by_cause"].items()] + [""])


def app_idle_overlay(folder: Path, idle_s: float) -> Path:
    """Write to ``folder`` an overlay of the default manifests' two fortio-server StatefulSets
    whose app runs with ``-server-idle-timeout <idle_s>s`` (fortio's keep-alive idle limit,
    30 s by default); returns ``folder``, to be given after :data:`DEFAULT_MANIFESTS`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in APP_MANIFESTS:
        docs = list(yaml.safe_load_all((DEFAULT_MANIFESTS / name).read_text()))
        for doc in docs:
            if doc.get("kind") == "StatefulSet":
                app = doc["spec"]["template"]["spec"]["containers"][0]
                app["args"] = [app["args"][0], "-server-idle-timeout", f"{idle_s:g}s",
                               *app["args"][1:]]
        (folder / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder


def choose_rate(run: Run, requested: str) -> tuple[int, dict[str, Any], str]:
    """The soak's rate, the max measurement (or {}) and the sentence saying why."""
    if requested != "auto":
        return int(requested), {}, f"Rate given on the command line ({requested} rps)."
    res = run.load("max", URL, users=CONNECTIONS, rate_per_s=OFFERED_MAX, duration_s=15,
                   mode="open-loop", connections=CONNECTIONS)
    measured = {"tps": round(res.tps, 1), "errors": res.errors,
                "p99_ms": round((res.latency_us.get("p99") or 0) / 1000, 3)}
    how = f"open loop offered {OFFERED_MAX} rps, {CONNECTIONS} connections, 15 s"
    if res.tps >= ISSUE_RATE * HEADROOM:
        return ISSUE_RATE, measured, (f"Measured max {measured['tps']} TPS ({how}): the "
                                      f"issue's {ISSUE_RATE} rps.")
    rate = int(res.tps * 0.5)
    return rate, measured, (f"The chain cannot sustain {ISSUE_RATE} rps here: its measured max "
                            f"is {measured['tps']} TPS ({how}), "
                            f"so the soak runs at 50 % of it.")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when the soak completed (targets met or not)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--rate", default="auto", help="requests/s, or auto (see the docstring)")
    ap.add_argument("--warmup-min", type=int, default=2)
    ap.add_argument("--lab", default="soak")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--app-idle-timeout-s", type=float, default=None,
                    help="the apps' -server-idle-timeout (default fortio's 30 s)")
    args = ap.parse_args(argv)
    if args.app_idle_timeout_s is not None and args.app_idle_timeout_s <= 0:
        ap.error(f"--app-idle-timeout-s: expected seconds > 0, got {args.app_idle_timeout_s}")
    with bench_run("mlsoak-") as (started, _work), \
            tempfile.TemporaryDirectory(prefix="mlsoak-reports-") as reports:
        manifests: list[Path] = [DEFAULT_MANIFESTS]
        if args.app_idle_timeout_s is not None:
            manifests.append(app_idle_overlay(Path(reports) / "app-idle-timeout",
                                              args.app_idle_timeout_s))
        env = LocalEnv(manifests, lab=args.lab)
        env.up()
        try:
            env.start_prometheus()
            run = Run(env, RunJournal(Path(reports), "soak"), client="netshoot")
            run.start_collectors(1.0)
            rate, measured, reason = choose_rate(run, args.rate)
            print(f"soak.py: {reason} {args.minutes} min at {rate} rps …", file=sys.stderr)
            sampler = MinuteSampler(env)
            try:
                with run.background_load("soak", URL, users=CONNECTIONS, rate_per_s=rate,
                                         duration_s=60.0 * args.minutes, mode="open-loop",
                                         connections=CONNECTIONS, timeout_s=10.0):
                    sampler.start()
            finally:
                sampler.stop()
                run.stop_collectors()
                run.finish("passed")
            load = run.journal.data["loads"][-1]  # the soak's, journaled as the block ended
            errors = error_records(env)
        finally:
            env.down()
    doc: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(),
        "settings": {"minutes": args.minutes, "rate_per_s": rate, "rate_reason": reason,
                     "warmup_min": args.warmup_min, "url": URL, "connections": CONNECTIONS,
                     "app_idle_timeout_s": args.app_idle_timeout_s},
        "max_measured": measured,
        "load": {k: load.get(k) for k in ("requests", "errors", "tps", "status_counts",
                                           "latency_us", "late", "skipped")},
        "minutes": per_minute(load["series"]), "samples": sampler.records,
        "errors_by_cause": errors}
    doc["load"]["tps"] = round(doc["load"]["tps"], 1)
    doc["summary"] = summarise(doc)
    write_results(args.out, "soak", started, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
