"""What observing the lab costs (issue #13 part 3), on the real base lab. Run by hand as root:

    .venv/bin/python benchmarks/collectors.py            # ~16 min
    .venv/bin/python benchmarks/collectors.py --window-s 15 --rounds 3 --ticks 20 --churn-s 60

1. **Prometheus scrape interval**: the lab idle (no load), Prometheus off, then on at 1 s, 5 s
   and 15 s. Per round, CPU seconds (``utime + stime`` from ``/proc/<pid>/stat``, all threads)
   over ``--window-s`` of the Prometheus process and of the sidecar processes (every uid-1337
   process of the meshed pods: the admin ``/stats/prometheus`` on 15090 and the merged 15020
   output are rendered there), scaled to CPU seconds per minute. "Δ sidecars" is the sidecars'
   CPU minus their CPU with Prometheus off (the same round's idle floor).
2. **One collector tick**: every pod's sockets and every pod's and node's conntrack (the
   sampler's kernel targets), read by the netlink readers (``sock_diag`` and ``ctnetlink``
   sockets kept open inside the namespaces; conntrack kept from events, or dumped every read)
   and by spawning ``ip netns exec … ss -Htanoie`` / ``conntrack -L`` (the kube path),
   interleaved, ``--ticks`` ticks per round; CPU = this process's and its children's
   ``getrusage`` (user + system, so the kernel's table walks count), idle and again with
   ``--short-conns`` closed connections in TIME-WAIT (sockets and conntrack entries to walk and
   decode).
3. **Conntrack: events vs dumps under churn**: the conntrack targets only (every pod and
   node), event-kept readers and dump-per-read readers side by side, one tick of each per
   second for ``--churn-s`` seconds per round while ``--churn-rate`` short connections per
   second go from the netshoot pod to L1 (NEW/UPDATE events, TIME-WAIT entries); measured
   before the TIME-WAIT tick rows, with readers opened once (steady state). Per round: median
   CPU ms per tick of each, and the kernel table walks per minute (full dumps counted by the
   readers, resyncs included; a dump-per-read reader walks once per read).

In the TIME-WAIT tick rows the event readers are opened *after* the short connections: their
entries predate the subscription (no event extension with ``nf_conntrack_events=2``), more
than ``max_gets`` per namespace, so those readers dump every read until the entries expire.

Writes ``benchmarks/results/collectors-<UTC>.json`` and ``collectors-latest.md``. Uses the lab
``cbench`` (removed at the end, also on SIGTERM); nothing touches the host namespace, and the
only traffic is the bounded short connections inside the lab.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from meshlab.collectors.conntrack import ConntrackCommand, ConntrackTarget
from meshlab.collectors.ctnetlink import CtnetlinkReader
from meshlab.collectors.sock_diag import SockDiagReader
from meshlab.collectors.sockets import SsReader
from meshlab.envs.local import prometheus as server
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.netns import netns_pids
from meshlab.envs.local.netns_socket import netns_connect
from meshlab.envs.local.state import LabState

LAB = "cbench"
INTERVALS_S = (1, 5, 15)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sidecar_pids(env: LocalEnv) -> list[int]:
    """Every uid-1337 process of the meshed pods (sidecars and their workers)."""
    out = []
    for pod in env.pods():
        if not pod.meshed:
            continue
        for pid in netns_pids(env.netns_of("pod", pod.name)):
            try:
                uid = next(ln.split()[1] for ln in Path(f"/proc/{pid}/status").read_text()
                           .splitlines() if ln.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if uid == "1337":
                out.append(pid)
    return out


def window_cpu(env: LocalEnv, window_s: float) -> dict[str, float]:
    """CPU seconds per minute of Prometheus and the sidecars over ``window_s``."""
    state = LabState.load(LAB)
    prom = state.pids.get(server.PID_KEY) if state else None
    sidecars = sidecar_pids(env)
    before = (proc_cpu_s(prom) if prom else 0.0, sum(proc_cpu_s(p) for p in sidecars))
    time.sleep(window_s)  # a measurement window, not synchronisation
    after = (proc_cpu_s(prom) if prom else 0.0, sum(proc_cpu_s(p) for p in sidecars))
    scale = 60.0 / window_s
    return {"prometheus": (after[0] - before[0]) * scale,
            "sidecars": (after[1] - before[1]) * scale}


def scrape_rounds(env: LocalEnv, rounds: int, window_s: float) -> list[dict[str, Any]]:
    """Per round: Prometheus off, then each interval of :data:`INTERVALS_S`."""
    out = []
    for r in range(rounds):
        env.stop_prometheus()
        row: dict[str, Any] = {"round": r + 1, "off": window_cpu(env, window_s)}
        for interval in INTERVALS_S:
            env.stop_prometheus()
            env.start_prometheus(scrape_interval_s=interval)
            row[f"{interval}s"] = window_cpu(env, window_s)
            print(f"round {r + 1}: {interval} s scrape {row[f'{interval}s']}", flush=True)
        env.stop_prometheus()
        out.append(row)
    return out


def cpu_now_s() -> float:
    """User + system CPU of this process and its reaped children, seconds."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


MODES = {"events": "netlink, conntrack from events (sock_diag + ctnetlink, kept open)",
         "dumps": "netlink, conntrack dumped every read (sock_diag + ctnetlink)",
         "spawn": "spawn (ip netns exec ss / conntrack -L)"}


def conntrack_readers(env: LocalEnv, mode: str) -> list[Any]:
    """The conntrack readers of every pod and node: ``events`` | ``dumps`` | ``spawn``."""
    spaces = [("pod", p.name) for p in env.pods()] + [("node", n) for n in env.plan.nodes]
    if mode == "spawn":
        return [ConntrackCommand(env.pod_shell(n) if k == "pod" else env.node_shell(n))
                for k, n in spaces]
    return [CtnetlinkReader(env.netns_of(k, n), events=mode == "events") for k, n in spaces]


def readers(env: LocalEnv, mode: str) -> list[Any]:
    """The sampler's kernel readers of the lab (every pod's sockets, then conntrack)."""
    socks = [SsReader(env.pod_shell(p.name)) if mode == "spawn"
             else SockDiagReader(env.netns_of("pod", p.name)) for p in env.pods()]
    return socks + conntrack_readers(env, mode)


def close_all(rs: list[Any]) -> None:
    """Close every reader."""
    for reader in rs:
        reader.close()


def tick_rounds(env: LocalEnv, rounds: int, ticks: int) -> dict[str, list[dict[str, float]]]:
    """Per mode, per round: median CPU ms and wall ms of one tick (all readers once), and the
    records one tick returned."""
    modes = {m: readers(env, m) for m in MODES}
    for rs in (modes["events"], modes["dumps"]):
        for reader in rs:
            reader.snapshot()  # open the sockets (and the first dump) outside the measurement
    out: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, rs in modes.items():
            cpu, wall, records = [], [], 0
            for _ in range(ticks):
                c0, t0 = cpu_now_s(), time.perf_counter()
                records = sum(len(r.snapshot()) for r in rs)
                cpu.append((cpu_now_s() - c0) * 1000)
                wall.append((time.perf_counter() - t0) * 1000)
            out[mode].append({"cpu_ms": statistics.median(cpu),
                              "wall_ms": statistics.median(wall), "records": records})
    close_all(modes["events"] + modes["dumps"])
    return out


def churn_rounds(env: LocalEnv, rounds: int, seconds: int, rate: int) -> list[dict[str, Any]]:
    """Per round: the conntrack targets read with events and with dumps once a second each
    for ``seconds`` s while ``rate`` short connections a second run; CPU ms per tick (median),
    walks and single-entry GETs per minute, and ticks where both gave the same ``states``.
    The readers are opened (and dumped) once before the rounds: the rounds are steady state."""
    modes = {m: [ConntrackTarget(c, "x", "pod") for c in conntrack_readers(env, m)]
             for m in ("events", "dumps")}
    for targets in modes.values():
        for target in targets:
            target.read()
    out = []
    for r in range(rounds):
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        before = {m: (sum(t.reader.walks for t in ts), sum(t.reader.gets for t in ts),
                      sum((t.reader.resyncs for t in ts), Counter())) for m, ts in modes.items()}
        same = 0
        start = time.monotonic()
        for second in range(seconds):
            short_connections(env, rate)
            lines = {}
            for mode, targets in modes.items():
                c0 = cpu_now_s()
                lines[mode] = [t.read() for t in targets]
                cpu[mode].append((cpu_now_s() - c0) * 1000)
            same += all(a["states"] == b["states"] for a, b in zip(*lines.values(), strict=True))
            time.sleep(max(0.0, start + second + 1 - time.monotonic()))  # the 1 s tick grid
        minutes = (time.monotonic() - start) / 60
        row: dict[str, Any] = {"round": r + 1, "ticks": seconds, "same_states": same}
        for mode, targets in modes.items():
            walks, gets, resyncs = before[mode]
            row[mode] = {
                "cpu_ms": statistics.median(cpu[mode]),
                "walks_per_min": (sum(t.reader.walks for t in targets) - walks) / minutes,
                "gets_per_min": (sum(t.reader.gets for t in targets) - gets) / minutes,
                "resyncs": dict(sum((t.reader.resyncs for t in targets), Counter()) - resyncs)}
        print(f"churn round {r + 1}: {row}", flush=True)
        out.append(row)
    for targets in modes.values():
        close_all(targets)
    return out


def short_connections(env: LocalEnv, count: int) -> None:
    """``count`` requests from the netshoot pod to L1's app port, each on its own connection,
    closed by the client once the response head arrived (TIME-WAIT sockets and conntrack
    entries remain)."""
    client = env.netns_of("pod", "netshoot-0")
    l1 = env.pod("fortio-server-0").ip
    for _ in range(count):
        with netns_connect(client, l1, 8070, 5.0) as sock:
            sock.sendall(b"GET /echo?size=10 HTTP/1.1\r\nHost: fortio-server\r\n"
                         b"Connection: close\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                head += chunk
            sock.shutdown(socket.SHUT_RDWR)


def spread(values: list[float]) -> str:
    """``median [min–max]``."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def markdown(doc: dict[str, Any]) -> str:
    """The result tables."""
    a = doc["args"]
    rows = doc["scrape"]
    lines = ["# Collectors and Prometheus: CPU cost", "",
             _common.machine_line(doc["machine"]), "",
             (f"## Prometheus scrape interval (lab idle, {a['window_s']:g} s windows, "
              f"{a['rounds']} rounds; CPU seconds per minute, median [min–max])"), "",
             "| scrape | Prometheus | sidecars | Δ sidecars vs off | Δ total | % of one core |",
             "|---|---|---|---|---|---|"]
    off = [r["off"]["sidecars"] for r in rows]
    lines.append(f"| off | – | {spread(off)} | – | – | – |")
    for interval in INTERVALS_S:
        key = f"{interval}s"
        prom = [r[key]["prometheus"] for r in rows]
        side = [r[key]["sidecars"] for r in rows]
        delta = [r[key]["sidecars"] - r["off"]["sidecars"] for r in rows]
        total = [p + d for p, d in zip(prom, delta, strict=True)]
        pct = [t / 60 * 100 for t in total]
        lines.append(f"| {interval} s | {spread(prom)} | {spread(side)} | {spread(delta)} | "
                     f"{spread(total)} | {spread(pct)} |")
    lines += ["", (f"## One collector tick ({a['ticks']} ticks per round, {a['rounds']} "
                   "rounds; median per round, then median [min–max] of the rounds)"), "",
              "| lab state | reader | CPU ms / tick | wall ms / tick | records |",
              "|---|---|---|---|---|"]
    for state, modes in doc["ticks"].items():
        for mode, label in MODES.items():
            rs = modes[mode]
            lines.append(f"| {state} | {label} | {spread([r['cpu_ms'] for r in rs])} | "
                         f"{spread([r['wall_ms'] for r in rs])} | {rs[-1]['records']} |")
    lines += ["", ("A tick reads every pod's sockets and every pod's and node's conntrack "
                   f"({doc['targets']} reads). CPU includes the kernel's walks of the host-wide "
                   "TCP and conntrack hash tables (every dump and `conntrack -L` walks the "
                   "whole conntrack hash; the event-kept reader only at its resyncs, and every "
                   "read while more than 128 entries of a namespace predate its subscription, "
                   "as in the TIME-WAIT rows: they send no events)."), ""]
    churn = doc["churn"]
    lines += [(f"## Conntrack targets: events vs dumps ({a['churn_rate']} short connections/s, "
               f"{a['churn_s']} one-second ticks per round, {a['rounds']} rounds; median "
               "[min–max] of the rounds)"), "",
              ("| conntrack reader | CPU ms / tick | kernel table walks / min | "
              "single-entry GETs / min | resyncs (last round) |"), "|---|---|---|---|---|"]
    for mode, label in (("events", "ctnetlink events (resync_s 30)"),
                        ("dumps", "ctnetlink dump every read")):
        rs = [r[mode] for r in churn]
        lines.append(f"| {label} | {spread([r['cpu_ms'] for r in rs])} | "
                     f"{spread([r['walks_per_min'] for r in rs])} | "
                     f"{spread([r['gets_per_min'] for r in rs])} | {rs[-1]['resyncs']} |")
    lines += ["", (f"{doc['ct_targets']} conntrack targets (pods and nodes). Ticks where both "
                   "readers gave the same `states` counts: "
                   + ", ".join(f"{r['same_states']}/{r['ticks']}" for r in churn)
                   + " (a connection can change state between the two reads)."), ""]
    return "\n".join(lines)


def main() -> None:
    """Run both measurements and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=45.0)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--short-conns", type=int, default=300)
    parser.add_argument("--churn-s", type=int, default=60)
    parser.add_argument("--churn-rate", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with _common.bench_run("mlcollectors-") as (started, _workdir):
        env = LocalEnv(lab=LAB)
        env.up()
        try:
            ticks = {"idle": tick_rounds(env, args.rounds, args.ticks)}
            churn = churn_rounds(env, args.rounds, args.churn_s, args.churn_rate)
            short_connections(env, args.short_conns)
            ticks[f"{args.short_conns} TIME-WAIT"] = tick_rounds(env, args.rounds, args.ticks)
            scrape = scrape_rounds(env, args.rounds, args.window_s)
            doc = {"machine": _common.machine_info(), "args": vars(args) | {"out": str(args.out)},
                   "targets": len(readers(env, "spawn")),
                   "ct_targets": len(conntrack_readers(env, "spawn")), "scrape": scrape,
                   "ticks": ticks, "churn": churn}
        finally:
            env.down()
    _common.write_results(args.out, "collectors", started, doc, markdown(doc))


if __name__ == "__main__":
    main()
