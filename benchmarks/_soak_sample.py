"""The soak's measurements besides the load: a sample of every lab process each minute and the
sidecars' non-2xx access-log records (:mod:`soak` runs them and judges the results).

A minute's sample has, per pod, the RSS (kB), open fds and CPU seconds of its sidecar (the
uid-1337 processes) and of its app (the rest; the client pod's are the load generator's), the
conntrack entries of every lab namespace (``conntrack -C``, pods and nodes), and the CPU seconds
of the lab's Prometheus, of the runner (this process and the collectors it runs) and of the
machine by state (``/proc/stat``: user, system, softirq, steal …), so that a change in latency
can be set beside where the cores' time went.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from _procs import TICK_S, comm_ticks, cpu_s, rss_kb

from meshlab.collectors.accesslog import parse_line
from meshlab.envs.local import prometheus
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.netns import netns_pids

CLIENT_POD = "netshoot"  # its processes are the load generator's: reported, not judged
ERROR_SAMPLE = 20  # non-2xx access-log records kept whole
ERROR_KEYS = ("start_time", "response_code", "response_flags", "response_code_details",
              "upstream_transport_failure_reason", "upstream_cluster", "upstream_host",
              "duration")


def _uid(pid: int) -> str:
    try:
        return next(ln.split()[1] for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ln.startswith("Uid:"))
    except (OSError, StopIteration):
        return ""


def _fds(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0


def sample(env: LocalEnv, others: OtherCpu | None = None) -> dict[str, Any]:
    """One minute's sample: ``{"procs": {"<pod>/sidecar"|"<pod>/app"|"<pod>/client": {"rss_kb",
    "fds", "pids", "cpu_s"}}, "conntrack": {"<kind>/<name>": entries}, "cpu": {"host": {"<field
    of /proc/stat's cpu line>_s": s}, "prometheus_s", "runner_s", "others": [[comm, s], …]}}``.

    ``cpu_s`` values are cumulative CPU seconds (user + system) of the processes alive at the
    sample; ``runner_s`` is this process's, with the reaped children (the collectors' ``ss``,
    ``conntrack``, ``ip netns exec`` …); ``others`` (given ``others``) are the processes outside
    the lab and the runner that used the most CPU since the previous sample.
    """
    procs: dict[str, dict[str, Any]] = {}
    conntrack: dict[str, int] = {}
    lab_pids: set[int] = set()
    for pod in env.pods():
        for pid in netns_pids(env.netns_of("pod", pod.name)):
            role = ("sidecar" if _uid(pid) == "1337" else
                    "client" if pod.name.startswith(CLIENT_POD) else "app")
            rec = procs.setdefault(f"{pod.name}/{role}",
                                   {"rss_kb": 0, "fds": 0, "pids": 0, "cpu_s": 0.0})
            rec["rss_kb"] += rss_kb(pid)
            rec["fds"] += _fds(pid)
            rec["pids"] += 1
            rec["cpu_s"] = round(rec["cpu_s"] + cpu_s([pid]), 2)
            lab_pids.add(pid)
        res = env.pod_shell(pod.name).run(["conntrack", "-C"], check=False)
        conntrack[f"pod/{pod.name}"] = int(res.stdout.strip() or 0) if res.ok else -1
    for node in env.plan.nodes:
        res = env.node_shell(node).run(["conntrack", "-C"], check=False)
        conntrack[f"node/{node}"] = int(res.stdout.strip() or 0) if res.ok else -1
    prom = prometheus.running_pid(env.lab)
    times = os.times()
    cpu: dict[str, Any] = {
        "host": host_cpu_s(), "prometheus_s": round(cpu_s([prom]), 2) if prom else 0.0,
        "runner_s": round(times.user + times.system + times.children_user
                          + times.children_system, 2)}
    if others is not None:
        cpu["others"] = others.top(lab_pids | {os.getpid(), prom or 0})
    return {"procs": procs, "conntrack": conntrack, "cpu": cpu}


HOST_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def host_cpu_s() -> dict[str, float]:
    """The machine's cumulative CPU time by state from ``/proc/stat``'s ``cpu`` line, summed
    over the cores: ``{"user_s", "nice_s", …, "steal_s"}`` (steal: time the hypervisor ran
    something else while this VM wanted a core)."""
    ticks = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:1 + len(HOST_FIELDS)]
    return {f"{name}_s": round(int(t) * TICK_S, 2) for name, t in zip(HOST_FIELDS, ticks)}


class OtherCpu:
    """The CPU used by processes outside a set of pids between calls of :meth:`top` (kernel
    threads included), grouped by ``comm``: the machine's other tenants inside this VM."""

    def __init__(self, keep: int = 5) -> None:
        self.keep, self._last = keep, self._scan()

    @staticmethod
    def _scan() -> dict[int, tuple[str, int]]:
        out = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and (rec := comm_ticks(int(proc.name))) is not None:
                out[int(proc.name)] = rec
        return out

    def top(self, exclude: set[int]) -> list[list[Any]]:
        """``[[comm, cpu_s], …]``: the :attr:`keep` biggest users since the previous call,
        processes in ``exclude`` left out; a process that started meanwhile counts whole."""
        now = self._scan()
        used: collections.Counter[str] = collections.Counter()
        for pid, (comm, ticks) in now.items():
            if pid in exclude:
                continue
            before = self._last.get(pid)
            used[comm] += ticks - (before[1] if before and before[0] == comm else 0)
        self._last = now
        return [[comm, round(t * TICK_S, 2)] for comm, t in used.most_common(self.keep) if t]


_TEXT_2XX = re.compile(r'\[\S+\] "[^"]*" 2')


def _is_2xx(line: str) -> bool:
    """Fast pre-filter: the line is a 2xx record in either access-log encoding."""
    return bool(_TEXT_2XX.match(line)) if line.startswith("[") else '"response_code":2' in line


def error_records(env: LocalEnv) -> dict[str, Any]:
    """Every sidecar's non-2xx access-log records (read as a stream, the logs are large):
    ``{"by_cause": {"<pod> <cluster> <code> <flags> <details>": n}, "sample": [records with
    ERROR_KEYS and "pod"]}``."""
    causes: collections.Counter[str] = collections.Counter()
    sample: list[dict[str, Any]] = []
    for pod in env.pods():
        path = env.pod_log_dir(pod.name) / "access.log"
        if not pod.meshed or not path.exists():
            continue
        with path.open(errors="replace") as lines:
            for line in lines:
                if _is_2xx(line):
                    continue
                rec = parse_line(line)
                if rec is None or 200 <= (rec.get("response_code") or 0) < 300:
                    continue
                cause = [pod.name] + [str(rec.get(k) or "-") for k in (
                    "upstream_cluster", "response_code", "response_flags",
                    "response_code_details")]
                causes[" ".join(cause)] += 1
                if len(sample) < ERROR_SAMPLE:
                    sample.append({"pod": pod.name, **{k: rec.get(k) for k in ERROR_KEYS}})
    return {"by_cause": dict(causes.most_common()), "sample": sample}


class MinuteSampler(threading.Thread):
    """Calls :func:`sample` at 0, 60, 120 … s after :meth:`start` until :meth:`stop`; each
    record carries ``minute`` and ``t_s``."""

    def __init__(self, env: LocalEnv) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.env, self.records, self._halt = env, [], threading.Event()
        self.t0 = 0.0
        self._others = OtherCpu()

    def run(self) -> None:
        self.t0 = time.monotonic()
        minute = 0
        while not self._halt.is_set():
            rec = sample(self.env, self._others)
            rec.update(minute=minute, t_s=round(time.monotonic() - self.t0, 1))
            self.records.append(rec)
            minute += 1
            self._halt.wait(max(0.0, self.t0 + 60 * minute - time.monotonic()))

    def stop(self) -> None:
        """Stop after the current sample and wait for the thread."""
        self._halt.set()
        self.join(timeout=60)


def cpu_per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CPU between consecutive samples, in % of one core (the machine has ``cores`` × 100 %):
    ``[{"minute", "<pod>/<role>", "prometheus", "runner", "host_busy", "host_softirq",
    "host_steal", "top_other": [comm, %] | None}]``; ``minute`` m is the interval that ends at
    sample m + 1 (records of run H also carry its speed probe, ``probe_us``: µs, not %).
    ``host_busy`` is every state but idle, iowait and steal."""
    rows = []
    for s0, s1 in itertools.pairwise(samples):
        if "cpu" not in s0 or "cpu" not in s1:
            continue
        dt_s = max(s1["t_s"] - s0["t_s"], 1e-9)

        def pct(after: float, before: float, dt_s: float = dt_s) -> float:
            return round(100.0 * (after - before) / dt_s, 1)

        row: dict[str, Any] = {"minute": s0["minute"]}
        for key, rec in s1["procs"].items():
            if key in s0["procs"]:
                row[key] = pct(rec["cpu_s"], s0["procs"][key]["cpu_s"])
        for key in ("prometheus", "runner"):
            row[key] = pct(s1["cpu"][f"{key}_s"], s0["cpu"][f"{key}_s"])
        h0, h1 = s0["cpu"]["host"], s1["cpu"]["host"]
        idle = ("idle_s", "iowait_s", "steal_s")
        row["host_busy"] = pct(sum(v for k, v in h1.items() if k not in idle),
                               sum(v for k, v in h0.items() if k not in idle))
        row["host_softirq"] = pct(h1["softirq_s"], h0["softirq_s"])
        row["host_steal"] = pct(h1["steal_s"], h0["steal_s"])
        if "probe_us" in s1["cpu"]:  # runs H and the check run before it had a speed probe
            row["probe_us"] = s1["cpu"]["probe_us"]
        top = (s1["cpu"].get("others") or [None])[0]
        row["top_other"] = None if top is None else [top[0], round(100.0 * top[1] / dt_s, 1)]
        rows.append(row)
    return rows


def cpu_thirds(rows: list[dict[str, Any]], warmup_min: int) -> dict[str, list[float]]:
    """Mean of every numeric column of :func:`cpu_per_minute` over the first and the last third
    of the minutes after the warm-up: ``{column: [first %, last %]}`` ({}: under 3 minutes)."""
    after = [r for r in rows if r["minute"] >= warmup_min]
    third = len(after) // 3
    if third == 0:
        return {}
    cols = [k for k in after[0] if k not in ("minute", "top_other")]
    return {k: [round(sum(r.get(k, 0.0) for r in part) / third, 1)
                for part in (after[:third], after[-third:])] for k in cols}
