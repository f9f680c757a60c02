"""Plumbing of the open-loop runner tests: the runner process and its target server together in
a private, anonymous network namespace.

The server is ``benchmarks/_stall_server.py`` (instant answers, pauses at known requests; see
``test_stall_server.py``), run on a thread of the test process that first entered a fresh
netns (``tests/proxy/_private_netns.py``); the runner is a child process forked from that
thread, so it inherits the namespace. Both talk over that namespace's loopback only; the
namespace disappears with them. Nothing is created in the host namespace.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from _private_netns import run_in_private_netns
from test_stall_server import load_stall_server

from meshlab.load import hdr
from meshlab.polling import wait_until

ss = load_stall_server()
RUNNER = [sys.executable, "-m", "meshlab.load.locust_runner", "--mode", "open-loop"]
URL = "http://127.0.0.1:{port}/stall"


@dataclass
class Outcome:
    """What one runner run left: its process, result file (None if absent) and the server's
    view (requests received, pauses with their ``time.monotonic()`` start/end)."""

    proc: subprocess.CompletedProcess[str]
    result: dict[str, Any] | None
    received: int
    stalls: list[dict[str, float]]


def run_open_loop(out: Path, *args: str, stall_at: tuple[int, ...] = (), stall_s: float = 1.0,
                  port: int | None = None, timeout_s: float = 60.0,
                  while_running: Callable[[subprocess.Popen[str], Any], None] | None = None
                  ) -> Outcome:
    """Run ``python -m meshlab.load.locust_runner --mode open-loop --url … *args --out out``
    against a stall server in a private netns.

    Args:
        out: the result path.
        args: further runner arguments (rate, duration, …).
        stall_at: 1-based request numbers whose arrival pauses the server for ``stall_s``.
        stall_s: pause length in seconds.
        port: target this port instead of the server's (e.g. one nothing listens on).
        timeout_s: bound of the whole run, seconds.
        while_running: called with the runner process and the server while it runs (the
            runner's exit is then awaited).
    """
    def body() -> Outcome:
        with ss.serve_in_thread(ss.StallPlan(stall_at=stall_at, stall_s=stall_s)) as server:
            argv = [*RUNNER, "--url", URL.format(port=port or server.port), *args,
                    "--out", str(out)]
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) as child:
                try:
                    if while_running is not None:
                        while_running(child, server)
                    stdout, stderr = child.communicate(timeout=timeout_s)
                finally:
                    if child.poll() is None:
                        child.kill()
            proc = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
            return Outcome(proc, json.loads(out.read_text()) if out.exists() else None,
                           server.requests, list(server.stalls))

    return run_in_private_netns(body, timeout_s=timeout_s + 15)


def stop_after(requests: int, deadline_s: float = 20.0) -> Callable[[Any, Any], None]:
    """A ``while_running`` that sends SIGTERM once the server has seen ``requests`` (polled;
    :class:`~meshlab.polling.PollTimeout` if it has not within ``deadline_s``)."""
    def hook(child: subprocess.Popen[str], server: Any) -> None:
        wait_until(lambda: server.requests, lambda seen: seen >= requests,
                   timeout_s=deadline_s, every_s=0.02,
                   what=f"stall server saw {requests} requests")
        child.send_signal(signal.SIGTERM)
    return hook


CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md"


def contract_keys() -> tuple[set[str], set[str]]:
    """(result keys, series point keys) of an open-loop result, read from §2's JSON blocks."""
    section = CONTRACTS.read_text().split("## 2.", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.DOTALL)]
    result = set().union(*(b.keys() for b in blocks))
    series = set().union(*(b["series"][0].keys() for b in blocks)) - {"…"}
    return result, series


def check_consistent(result: dict[str, Any]) -> None:
    """Invariants of every open-loop result."""
    keys, series_keys = contract_keys()
    assert set(result) == keys
    assert all(set(point) == series_keys for point in result["series"])
    assert result["tool"] == "meshlab" and result["mode"] == "open-loop"
    assert result["processes"] == 1 and result["late_threshold_us"] == 1000
    assert sum(result["status_counts"].values()) == result["requests"]
    for key in ("requests", "errors", "late", "skipped"):
        assert sum(p[key] for p in result["series"]) == result[key], key
    assert [p["t_s"] for p in result["series"]] == list(range(len(result["series"])))
    for name, summary in (("hdr", "latency_us"), ("hdr_uncorrected", "latency_uncorrected_us")):
        histogram = hdr.decode(result[name])
        assert histogram.get_total_count() == result["requests"]
        assert hdr.percentiles(histogram) == result[summary]
        per_second = hdr.merge(p[name] for p in result["series"] if p[name])
        assert per_second.get_total_count() == result["requests"]
    if result["requests"]:
        # every request's corrected latency >= its uncorrected one, so every quantile is too
        for key in ("min", "p50", "p90", "p99", "p999", "max"):
            assert result["latency_us"][key] >= result["latency_uncorrected_us"][key], key


def completed(out: Path, *args: str, **kwargs: Any) -> Outcome:
    """:func:`run_open_loop` that must exit 0 with a result passing :func:`check_consistent`."""
    run = run_open_loop(out, *args, **kwargs)
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.result is not None
    check_consistent(run.result)
    return run
