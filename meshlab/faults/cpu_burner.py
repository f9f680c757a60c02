"""``python -m meshlab.faults.cpu_burner --load-pct N --id ID``: burn ``N`` % of one CPU until
SIGTERM — the process ``cpu-stress`` starts inside a container's cgroup (what stress-ng's
``--cpu 1 --cpu-load N`` does, without the package).

It runs a duty cycle of :data:`SLICE_S`: busy (a tight loop) for ``N`` % of each slice, asleep
for the rest, measured with the thread's own CPU clock so that time it spends throttled or
preempted does not count as work done. ``--id`` only names the process for ``pgrep``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

SLICE_S = 0.1


def burn(load_pct: float, stop: list[bool]) -> None:
    """Burn ``load_pct`` % of one CPU in :data:`SLICE_S` slices until ``stop[0]``."""
    while not stop[0]:
        start = time.monotonic()
        cpu_start = time.thread_time()
        busy_s = SLICE_S * load_pct / 100
        while time.thread_time() - cpu_start < busy_s and not stop[0]:
            pass
        rest = SLICE_S - (time.monotonic() - start)
        if rest > 0 and load_pct < 100:
            time.sleep(rest)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 on SIGTERM/SIGINT, 2 on a bad argument."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.faults.cpu_burner")
    parser.add_argument("--load-pct", type=float, required=True, help="percent of one CPU")
    parser.add_argument("--id", required=True, help="the fault's id (names the process)")
    args = parser.parse_args(argv)
    if not 0 < args.load_pct <= 100:
        parser.error(f"--load-pct: expected 0 < N <= 100, got {args.load_pct}")
    stop = [False]

    def on_signal(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("ready", flush=True)
    burn(args.load_pct, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
