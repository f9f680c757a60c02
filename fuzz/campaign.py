"""A fuzz campaign (run by hand, not in CI): each harness for ``--runs`` executions (default
1,000,000) or ``--max-time-s``, whichever comes first, one after another; writes
``benchmarks/results/fuzz-latest.md`` with executions, speed, coverage and crashes per target.

    .venv/bin/python fuzz/campaign.py [--runs N] [--max-time-s S] [--targets a,b]

New corpus entries go to a scratch folder (the repo's ``fuzz/corpus/<target>`` is read, not
grown); crashing and hanging inputs are kept in ``fuzz/artifacts/<target>/`` — add them to the
corpus once fixed, as regression inputs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = ROOT / "benchmarks" / "results" / "fuzz-latest.md"
ROWS = RESULT.with_suffix(".json")  # the rows, so a campaign over some targets keeps the rest
TARGETS = ("request_codec", "response_parser", "admin_query", "manifest_loader", "sidecar_config")
_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+ .*exec/s: (\d+)")


def run_target(name: str, runs: int, max_time_s: int) -> dict[str, object]:
    """One harness run; ``{"target", "executions", "seconds", "exec_per_s", "coverage",
    "features", "corpus", "crashes", "exit"}``."""
    artifacts = HERE / "artifacts" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(HERE / f"fuzz_{name}.py"), f"-runs={runs}",
             f"-max_total_time={max_time_s}", "-timeout=1", "-print_final_stats=1",
             f"-artifact_prefix={artifacts}/", scratch, str(HERE / "corpus" / name)],
            capture_output=True, text=True, check=False)
        seconds = time.monotonic() - start
    done = _DONE.findall(proc.stderr)
    execs, cov, ft, corp, speed = (int(x) for x in done[-1]) if done else (0, 0, 0, 0, 0)
    crashes = sorted(p.name for p in artifacts.iterdir()
                     if p.name.startswith(("crash-", "timeout-", "oom-")))
    return {"target": name, "executions": execs, "seconds": round(seconds, 1),
            "exec_per_s": speed, "coverage": cov, "features": ft, "corpus": corp,
            "crashes": crashes, "exit": proc.returncode}


def report(rows: list[dict[str, object]]) -> str:
    """The results table (markdown)."""
    lines = [f"# Fuzz campaign (updated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "", ("atheris (libFuzzer), 1 s timeout per input; each row's budget is the run's "
                  "limit (executions or seconds, whichever came first); coverage = libFuzzer's "
                  "`cov` (edges of instrumented meshlab/h11 code reached), features = `ft`; "
                  "crashes = inputs left in `fuzz/artifacts/<target>/` by that run."), "",
             "| target | budget | executions | ≥ 1M | s | exec/s | cov | ft | corpus | crashes |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        crashes = ", ".join(r["crashes"]) or "0"  # type: ignore[arg-type]
        lines.append(f"| {r['target']} | {r.get('budget', '')} | {r['executions']:,} | "
                     f"{'yes' if int(r['executions']) >= 1_000_000 else 'NO'} | {r['seconds']} | "
                     f"{r['exec_per_s']} | {r['coverage']} | {r['features']} | {r['corpus']} | "
                     f"{crashes} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--max-time-s", type=int, default=1800)
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    kept = {r["target"]: r for r in (json.loads(ROWS.read_text()) if ROWS.exists() else [])}
    for name in args.targets.split(","):
        kept[name] = {**run_target(name, args.runs, args.max_time_s),
                      "budget": f"{args.runs:,} runs / {args.max_time_s} s"}
        print(kept[name], flush=True)
    rows = [kept[t] for t in TARGETS if t in kept]
    ROWS.write_text(json.dumps(rows, indent=1))
    RESULT.write_text(report(rows))
    print(RESULT)


if __name__ == "__main__":
    main()
