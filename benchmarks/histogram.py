"""Histogram recording: the sidecar's per-sample cost and the bin memo's memory, side by side
with the same code at a git revision.

``.venv/bin/python benchmarks/histogram.py [--baseline REV] [--samples N] [--rounds R]``
(no root, no lab, ~20 s). Writes ``benchmarks/results/histogram-<date>.json`` and
``histogram-latest.md``.

Each variant is :mod:`meshlab.proxy.stats.store` (the working tree's, and ``--baseline``'s read
with ``git show``, default ``HEAD``) loaded as its own module. The samples are what one request
records on the hot path: a float duration in ms (exponential, mean 3 ms; these are almost never
seen twice) and an integral byte count (80–400). Each variant first records the samples once
(its memo then holds what it keeps in a long run), then ``--rounds`` timed rounds run the
variants in alternating order; the report gives ns per ``record()`` (median and min–max), their
ratio, and the memo's traced memory in MB after the warm-up.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import bench_run, machine_info, machine_line, write_results

STORE = "meshlab/proxy/stats/store.py"


def load_store(name: str, source: str, folder: Path) -> ModuleType:
    """``source`` (a store.py text) imported as module ``name`` from a file in ``folder``."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def warm(mod: ModuleType, samples: list[tuple[float, int]]) -> float:
    """Record ``samples`` once into a fresh histogram of ``mod``; the MB its memo and the
    histogram now hold (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    hist = mod.Histogram("warm")
    for duration_ms, size in samples:
        hist.record(duration_ms)
        hist.record(size)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / 1e6


def time_round(mod: ModuleType, samples: list[tuple[float, int]]) -> float:
    """ns per ``record()`` over ``samples`` (two records each) into a fresh histogram."""
    hist = mod.Histogram("timed")
    t0 = time.perf_counter()
    for duration_ms, size in samples:
        hist.record(duration_ms)
        hist.record(size)
    return (time.perf_counter() - t0) / (2 * len(samples)) * 1e9


def markdown(doc: dict[str, Any]) -> str:
    """The table written to ``histogram-latest.md``."""
    s = doc["settings"]
    lines = [f"# Histogram record ({doc['started']})", "", machine_line(doc["machine"]), "",
             (f"{s['samples']} requests (a float duration and an integral size each), "
              f"{s['rounds']} rounds in alternating order."), "",
             "| variant | ns/record median | min – max | memo + histogram MB |",
             "|---|---|---|---|"]
    for name, v in doc["variants"].items():
        lines.append(f"| {name} | {v['median_ns']:.0f} | {min(v['ns']):.0f} – {max(v['ns']):.0f}"
                     f" | {v['memo_mb']:.2f} |")
    lines += ["", f"Working tree / baseline, median ns: **{doc['ratio']:.2f}**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="HEAD", help="git revision of the baseline store.py")
    ap.add_argument("--samples", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.rounds < 3:
        ap.error("--rounds: at least 3")
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                         capture_output=True, text=True, check=False)
    old = subprocess.run(["git", "-C", str(REPO), "show", f"{args.baseline}:{STORE}"],
                         capture_output=True, text=True, check=False)
    if rev.returncode or old.returncode:
        ap.error(f"--baseline {args.baseline}: {(rev.stderr or old.stderr).strip()}")
    baseline = rev.stdout.strip()
    rng = random.Random(1)
    samples = [(rng.expovariate(1 / 3.0), rng.randint(80, 400)) for _ in range(args.samples)]
    with bench_run("mlhist-") as (started, work):
        mods = {f"baseline {baseline}": load_store("store_baseline", old.stdout, work),
                "working tree": load_store("store_work", (REPO / STORE).read_text(), work)}
        variants: dict[str, dict[str, Any]] = {n: {"memo_mb": warm(m, samples), "ns": []}
                                               for n, m in mods.items()}
        for r in range(args.rounds):
            for name in (list(mods) if r % 2 == 0 else list(reversed(mods))):
                variants[name]["ns"].append(time_round(mods[name], samples))
    for v in variants.values():
        v["median_ns"] = statistics.median(v["ns"])
    base, work = variants.values()
    doc = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(),
           "settings": {"baseline": baseline, "samples": args.samples,
                        "rounds": args.rounds},
           "variants": variants, "ratio": work["median_ns"] / base["median_ns"]}
    write_results(args.out, "histogram", started, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
