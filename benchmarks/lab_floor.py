"""Benchmark: the local lab's own latency floor on the 4-hop chain, collectors off vs on.

``.venv/bin/python benchmarks/lab_floor.py [--rounds 3] [--duration-s 20]`` (root). Writes
``benchmarks/results/lab_floor-<date>.json`` and ``benchmarks/results/lab_floor-latest.md``.

The chain (the book's layered fortio lab, ``manifests/``)::

    netshoot ─► L1 sidecar (inbound) ─► fortio-server L1 app (-M proxy)
             ─► L1 sidecar (outbound) ─► L2 sidecar (inbound) ─► fortio-server-l2 app

Load: ``meshlab``'s open-loop engine from the netshoot pod to
``http://fortio-server:8070/echo?size=100`` (16 keep-alive connections, constant arrivals,
latency from each request's scheduled start: corrected for coordinated omission), at 100 and
1000 rps. Observers **off**: no collectors, no Prometheus. Observers **on**: the lab's
Prometheus (its default scrape interval) and the collectors at 1 s, as a suite runs them by
default. Every round runs all four cells in rotated order on one lab; cells report the median
and min–max over the rounds, and the on/off ratio of the medians.

Targets (issue #13): p99 ≤ 8 ms at 100 rps with observers on, on ≤ 1.2 × off; at 1000 rps no
errors and p99 ≤ 15 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import bench_run, machine_info, verdict, write_results

from meshlab.envs.local import istiod
from meshlab.envs.local.lab import LocalEnv
from meshlab.experiment import Run
from meshlab.journal import RunJournal

URL = "http://fortio-server:8070/echo?size=100"
L1_POD = "fortio-server-0"
RATES = (100, 1000)
PCTS = ("p50", "p90", "p99", "p999")
TARGETS = {"p99_ms_100rps_on": 8.0, "on_off_ratio_p99_100rps": 1.2, "p99_ms_1000rps": 15.0,
           "errors_1000rps": 0}


def run_cell(env: LocalEnv, reports: Path, rate: int, observers: bool,
             args: argparse.Namespace) -> dict:
    """One load with observers on or off; returns latency (ms), TPS and errors."""
    if observers:
        env.start_prometheus()
    else:
        env.stop_prometheus()
    run = Run(env, RunJournal(reports, f"lab_floor {rate} rps observers={observers}"),
              client="netshoot")
    if observers:
        run.start_collectors(1.0)
    try:
        result = run.load("floor", URL, users=1, rate_per_s=float(rate),
                          duration_s=args.duration_s, mode="open-loop", connections=16)
    finally:
        run.stop_collectors()
        run.finish("passed")
    lat = result.latency_us
    return {"requests": result.requests, "errors": result.errors, "tps": round(result.tps, 1),
            **{f"{p}_ms": None if lat.get(p) is None else round(lat[p] / 1000, 3)
               for p in PCTS}}


def _spread(vals: list) -> dict:
    vals = [v for v in vals if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(vals), 3), "min": min(vals), "max": max(vals)}


def summarise(cells: dict[str, list[dict]]) -> dict:
    """Median and min–max per cell, the on/off ratios and the target verdicts."""
    out: dict = {"cells": {}, "ratios": {}, "targets": {}}
    for key, rounds in cells.items():
        out["cells"][key] = {k: _spread([r[k] for r in rounds])
                             for k in ("tps", "errors", *(f"{p}_ms" for p in PCTS))}
    for rate in RATES:
        on, off = out["cells"].get(f"{rate}/on"), out["cells"].get(f"{rate}/off")
        if on and off:
            out["ratios"][f"{rate}rps"] = {
                p: (round(on[f"{p}_ms"]["median"] / off[f"{p}_ms"]["median"], 2)
                    if off[f"{p}_ms"]["median"] else None) for p in PCTS}
    c, t = out["cells"], out["targets"]
    if "100/on" in c:
        t["p99_ms_100rps_on"] = verdict(c["100/on"]["p99_ms"]["median"],
                                        TARGETS["p99_ms_100rps_on"])
    if "100rps" in out["ratios"]:
        t["on_off_ratio_p99_100rps"] = verdict(out["ratios"]["100rps"]["p99"],
                                               TARGETS["on_off_ratio_p99_100rps"])
    if "1000/on" in c:
        worst = max(c[k]["p99_ms"]["median"] or 0 for k in ("1000/on", "1000/off") if k in c)
        t["p99_ms_1000rps"] = verdict(worst, TARGETS["p99_ms_1000rps"])
        errs = max(c[k]["errors"]["max"] or 0 for k in ("1000/on", "1000/off") if k in c)
        t["errors_1000rps"] = verdict(errs, TARGETS["errors_1000rps"])
    return out


def sidecar_concurrency(env: LocalEnv) -> int:
    """The worker count the lab's L1 sidecar ran with (its ``sidecar.json``)."""
    return istiod.proxy_concurrency(env.plan.pods[L1_POD])


def markdown(doc: dict) -> str:
    """The human summary written to ``lab_floor-latest.md``."""
    s, st = doc["summary"], doc["settings"]
    lines = [f"# Lab floor benchmark ({doc['started']})", "",
             (f"Machine: {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores, "
              f"kernel {doc['machine']['kernel']}, Python {doc['machine']['python']}."),
             (f"Chain: netshoot → L1 sidecar → L1 app (-M) → L1 sidecar → L2 sidecar → L2 app; "
              f"`{URL}`, open loop, 16 connections, {st['duration_s']:.0f} s per cell, "
              f"{st['rounds']} rounds in rotated order. Cells: median [min–max]. Observers on = "
              "the lab's Prometheus + collectors at 1 s. Sidecars: "
              f"concurrency {st.get('sidecar_concurrency', 1)} (the manifests' value; Istio's "
              "default is 2)."), "",
             "| rate | observers | TPS | errors | p50 ms | p90 ms | p99 ms | p99.9 ms |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(v: dict) -> str:
        return "-" if v["median"] is None else f"{v['median']} [{v['min']}–{v['max']}]"

    for key, c in s["cells"].items():
        rate, obs = key.split("/")
        lines.append(f"| {rate} rps | {obs} | {cell(c['tps'])} | {cell(c['errors'])} | "
                     + " | ".join(cell(c[f"{p}_ms"]) for p in PCTS) + " |")
    lines += ["", "| on/off ratio (medians) | p50 | p90 | p99 | p99.9 |", "|---|---|---|---|---|"]
    for rate, r in s["ratios"].items():
        lines.append(f"| {rate} | " + " | ".join(str(r[p]) for p in PCTS) + " |")
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for name, v in s["targets"].items():
        goal = f"= {v['target']}" if name.startswith("errors") else f"≤ {v['target']}"
        lines.append(f"| {name} | {v['value']} | {goal} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when the run completed (targets met or not)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--lab", default="floor")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    cells: dict[str, list[dict]] = {}
    order = [(rate, obs) for rate in RATES for obs in (False, True)]
    with bench_run("mlfloor-") as (started, _work), \
            tempfile.TemporaryDirectory(prefix="mlfloor-reports-") as reports:
        env = LocalEnv(lab=args.lab)
        env.up()
        concurrency = sidecar_concurrency(env)
        try:
            for rnd in range(args.rounds):
                for rate, obs in order[rnd % len(order):] + order[:rnd % len(order)]:
                    print(f"lab_floor.py: round {rnd + 1}/{args.rounds} {rate} rps "
                          f"observers {'on' if obs else 'off'} …", file=sys.stderr)
                    res = run_cell(env, Path(reports), rate, obs, args)
                    cells.setdefault(f"{rate}/{'on' if obs else 'off'}", []).append(res)
        finally:
            env.down()
    cells = {k: cells[k] for k in sorted(cells, key=lambda k: (int(k.split("/")[0]), k))}
    doc = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(),
           "settings": {"rounds": args.rounds, "duration_s": args.duration_s, "url": URL,
                        "connections": 16, "rates": list(RATES)},
           "cells": cells}
    doc["settings"]["sidecar_concurrency"] = concurrency
    doc["summary"] = summarise(cells)
    write_results(args.out, "lab_floor", started, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
