"""Load generators of ``benchmarks/load.py``, run one at a time pinned in the client netns.

Each generator is one process (``ip netns exec`` → ``taskset`` → the program all exec, so the
Popen pid is the generator itself). While it runs, :func:`run_sampled` samples every
``SAMPLE_S`` its CPU (``utime + stime``, :func:`_procs.cpu_s`) and the server's count of handled
requests (nginx ``stub_status``); :func:`steady` turns the samples into the steady-state window
(the load's active span minus ``TRIM_S`` at each end): server-side req/s, generator CPU in cores
and requests per generator CPU-second. The generator's own figure comes from its own output:

- ``meshlab``: the runner's result (CONTRACTS.md §2) ``tps`` = requests / elapsed run time;
- ``locust``: plain Locust's statistics, ``num_requests / (last_request_timestamp -
  start_time)`` of the ``GET /`` entry (``--json-file``), as its UI shows "RPS";
- ``wrk``: its ``Requests/sec`` line.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _procs

from meshlab.envs.local.netns import NetnsShell

SAMPLE_S = 0.25
"""Sampling period of CPU and server counts, in seconds."""
TRIM_S = 1.0
"""Seconds cut from each end of the active span (start-up ramp, shutdown)."""
ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
LOCUST = str(ROOT / ".venv" / "bin" / "locust")
LOCUSTFILE = str(Path(__file__).resolve().parent / "_plain_locustfile.py")


@dataclass(frozen=True)
class Sample:
    """One sample: monotonic time (s), generator CPU so far (s), server requests so far."""

    t_s: float
    cpu_s: float
    served: int


def run_sampled(ns: str, argv: list[str], *, cpu: str, role: str, logdir: Path,
                timeout_s: float, served: Callable[[], int]) -> tuple[int, list[Sample]]:
    """Run ``argv`` pinned to core ``cpu`` in ``ns`` until it exits, sampling it.

    Args:
        ns: client netns.
        argv: the generator command.
        cpu: ``taskset -c`` core list.
        role: name of its ``<role>.out`` / ``<role>.err`` files in ``logdir``.
        logdir: where stdout and stderr go.
        timeout_s: the generator is killed after this long.
        served: returns the server's total of handled requests.

    Returns:
        The exit status and the samples (one every :data:`SAMPLE_S`, plus one at the exit).

    Raises:
        RuntimeError: the generator ran past ``timeout_s`` (it is killed).
    """
    popen = NetnsShell(ns).popen(["taskset", "-c", cpu, *argv], stdout=logdir / f"{role}.out",
                                 stderr=logdir / f"{role}.err")
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout_s
    while True:
        samples.append(Sample(time.monotonic(), _procs.cpu_s([popen.pid]), served()))
        try:
            code = popen.wait(timeout=SAMPLE_S)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                popen.kill()
                popen.wait()
                raise RuntimeError(f"{role}: still running after {timeout_s:.0f} s; killed"
                                   ) from None
    samples.append(Sample(time.monotonic(), samples[-1].cpu_s, served()))
    return code, samples


def steady(samples: list[Sample]) -> dict[str, float]:
    """Server req/s, generator CPU (cores) and requests per CPU-second in the steady window.

    The active span runs from the sample before the first one that saw the server's count rise
    (by more than the sample's own ``stub_status`` request) to the last one that did;
    :data:`TRIM_S` is cut from each end. The CPU of the exit sample
    is the last one read (the process is gone), so the window ends at an earlier sample.

    Returns:
        ``{"window_s", "server_rps", "cpu_cores", "requests_per_cpu_s"}`` (empty without a
        window of two samples).
    """
    rising = [i for i in range(1, len(samples) - 1)
              if samples[i].served > samples[i - 1].served + 1]
    if not rising:
        return {}
    begin, end = samples[rising[0] - 1].t_s + TRIM_S, samples[rising[-1]].t_s - TRIM_S
    inside = [i for i, s in enumerate(samples[:-1]) if begin <= s.t_s <= end]
    if len(inside) < 2:
        return {}
    a, b = samples[inside[0]], samples[inside[-1]]
    # each sample's own stub_status request is in the count: one per sample after ``a``
    dreq = b.served - a.served - (inside[-1] - inside[0])
    dt, dcpu = b.t_s - a.t_s, b.cpu_s - a.cpu_s
    return {"window_s": round(dt, 2), "server_rps": round(dreq / dt, 1),
            "cpu_cores": round(dcpu / dt, 3),
            "requests_per_cpu_s": round(dreq / dcpu, 1) if dcpu > 0 else None}


def meshlab_argv(url: str, conns: int, duration_s: float, out: Path,
                 open_loop_rps: float | None = None) -> list[str]:
    """meshlab's runner (``python -m meshlab.load.locust_runner``) with ``conns`` connections:
    closed loop (``conns`` Locust users, unthrottled), or open loop at ``open_loop_rps``
    (constant schedule, a pool of ``conns`` connections)."""
    argv = [PY, "-m", "meshlab.load.locust_runner", "--url", url, "--duration-s",
            str(duration_s), "--timeout-s", "5", "--out", str(out)]
    if open_loop_rps is None:
        return [*argv, "--users", str(conns)]
    return [*argv, "--mode", "open-loop", "--rate-per-s", repr(float(open_loop_rps)),
            "--distribution", "constant", "--connections", str(conns)]


def meshlab_own(out: Path) -> dict:
    """The runner's own figures from its result file."""
    res = json.loads(out.read_text())
    return {"requests": res["requests"], "errors": res["errors"], "rps": res["tps"],
            "elapsed_s": round(res["end_epoch_s"] - res["start_epoch_s"], 3), "result": res}


def locust_argv(host: str, conns: int, duration_s: float, out_prefix: Path) -> list[str]:
    """Plain Locust, headless, ``conns`` users spawned at once, ``FastHttpUser`` (no meshlab)."""
    return [LOCUST, "-f", LOCUSTFILE, "--headless", "-u", str(conns), "-r", str(conns),
            "-t", f"{duration_s:g}s", "-H", host, "--only-summary", "--loglevel", "WARNING",
            "--json-file", str(out_prefix), "--stop-timeout", "0"]


def locust_own(out_prefix: Path) -> dict:
    """Plain Locust's own statistics (``<out_prefix>.json``, the ``GET /`` entry)."""
    entries = json.loads(out_prefix.with_name(out_prefix.name + ".json").read_text())
    e = next(x for x in entries if x["name"] == "/")
    elapsed = e["last_request_timestamp"] - e["start_time"]
    return {"requests": e["num_requests"], "errors": e["num_failures"],
            "rps": round(e["num_requests"] / elapsed, 1), "elapsed_s": round(elapsed, 3)}


def wrk_argv(url: str, conns: int, duration_s: float) -> list[str]:
    """``wrk`` (C, epoll), one thread, ``conns`` connections."""
    return ["wrk", "-t1", f"-c{conns}", f"-d{duration_s:g}s", url]


def wrk_own(stdout: str) -> dict:
    """wrk's own figures from its report.

    Raises:
        RuntimeError: the report has no ``Requests/sec`` line.
    """
    rps = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", stdout)
    if not rps or not total:
        raise RuntimeError(f"unexpected wrk output: {stdout[-500:]!r}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", stdout)
    elapsed = float(total.group(2)) / (1000.0 if total.group(3) == "ms" else 1.0)
    return {"requests": int(total.group(1)), "errors": int(errors.group(1)) if errors else 0,
            "rps": float(rps.group(1)), "elapsed_s": elapsed}
