"""Reliability: SIGKILL the runner at random points, 20 trials, each followed by ``meshlab down``,
a leftover scan, and the next ``up`` plus the baseline suite.

``.venv/bin/python benchmarks/kill9.py [--trials 20] [--seed N] [--lab k9]`` (root). Writes
``benchmarks/results/kill9-<date>.json`` and ``benchmarks/results/kill9-latest.md``.

The harness is ``tests/reliability/kill9_harness.py`` (the phases, their triggers and the
leftover scan are described there); CI runs 5 trials of it (``tests/reliability/test_kill9.py``).
Trials cycle through the six phases in a shuffled order, so each phase gets at least 3 of 20;
the delay inside a phase is drawn from the seeded generator.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))
sys.path.insert(0, str(HERE.parent / "tests"))  # lab_scan, which the harness imports

from _common import bench_run, machine_info, write_results
from kill9_harness import PHASES, baseline_passes, trial


def markdown(doc: dict) -> str:
    """The table written to ``kill9-latest.md``."""
    m, trials = doc["machine"], doc["trials"]
    clean = sum(1 for t in trials if not t["leftovers"])
    base = sum(1 for t in trials if t["baseline_passed"])
    lines = [f"# kill -9 trials ({doc['started']})", "",
             (f"Machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}. Seed "
             f"{doc['seed']}, lab `{doc['lab']}`, scenario `tests/reliability/kill9_scenario.py` "
             "(warm-up load; packet-drop + bandwidth + cpu-limit under load; revert; report)."),
             "", (f"**{clean}/{len(trials)} trials left nothing behind after `meshlab down`; "
             f"the next up + baseline suite passed {base}/{len(trials)}.**"), "",
             ("| # | phase | delay s | killed | where it landed (lab / last activity / journal / "
             "series / report) | `meshlab down` said | down s | leftovers | next up + baseline |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for i, t in enumerate(trials, 1):
        w = t["landed"]
        where = (f"{w['lab']} / {w['activity'] or '-'} / {w['journal'] or '-'} / "
                 f"{'yes' if w['series'] else 'no'} / {'yes' if w['report'] else 'no'}")
        said = "; ".join(t["down_output"]).replace("|", "/")
        lines.append(f"| {i} | {t['phase']} | {t['delay_s']} | {'yes' if t['killed'] else 'no'} "
                     f"| {where} | {said} | {t['down_s']} | "
                     f"{'; '.join(t['leftovers']) or 'none'} | "
                     f"{'passed' if t['baseline_passed'] else 'FAILED'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when every trial was clean and every baseline passed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--lab", default="k9")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    phases: list[str] = []
    while len(phases) < args.trials:
        batch = list(PHASES)
        rng.shuffle(batch)
        phases += batch
    trials = []
    with bench_run("mlkill9-") as (started, _work):
        for i, phase in enumerate(phases[:args.trials], 1):
            rec = trial(phase, args.lab, rng)
            rec["baseline_passed"], rec["baseline_tail"] = baseline_passes(args.lab)
            trials.append(rec)
            print(f"kill9.py: trial {i}/{args.trials} {phase} +{rec['delay_s']} s: landed "
                  f"{rec['landed']}, leftovers {rec['leftovers'] or 'none'}, baseline "
                  f"{'passed' if rec['baseline_passed'] else 'FAILED'}", file=sys.stderr)
    doc = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(),
           "seed": seed, "lab": args.lab, "trials": trials}
    write_results(args.out, "kill9", started, doc, markdown(doc))
    ok = all(not t["leftovers"] and t["baseline_passed"] for t in trials)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
