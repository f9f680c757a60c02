"""Accuracy and cost of the ``network-delay`` fault's userspace netem (issue #15), on the real
base lab. Run by hand as root (~3 min):

    .venv/bin/python benchmarks/faults.py [--rounds 3] [--pps 1000] [--seconds 10]

1. **Delay**: a UDP ping at ``--pps`` from netshoot to an echo socket in L2's netns (datagrams
   carry their send time; RTT = echo arrival − send), without the fault and with
   ``network-delay delay_ms=20 jitter_ms=5`` (normal) on L2's ingress, so each ping crosses
   the delay once; interleaved, ``--rounds`` rounds. Per round: median added RTT (with − the
   same round's baseline median) and the RTT standard deviation with the fault. Targets:
   median within ±1 ms of 20, standard deviation within ±20 % of 5.
2. **Agent CPU**: the agent's own ``getrusage`` (user + system, from its exit summary) over
   the delay run, as vCPU per 1000 packets/s (each ping is one queued packet).
3. **Maximum rate**: delay 1 ms, no jitter, offered rates rising; the highest rate at which
   ≥ 95 % of the pings come back (relative to the same rate without the fault; the Python
   sender itself has a ceiling, shown too).
4. **Loss and duplication at 10 %**: 10,000 one-way datagrams each; the count received must be
   within the Binomial(10000, p) mean ± 4σ.

Writes ``benchmarks/results/faults-<UTC>.json`` and ``faults-latest.md``. Uses the lab
``fbench`` (removed at the end, also on SIGTERM); all traffic stays inside the lab's
namespaces and is bounded by count and time.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from meshlab.envs.base import STATE_ROOT
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.netns_socket import netns_socket
from meshlab.experiment.labs import lab_down, lab_up
from meshlab.faults.base import active
from meshlab.faults.network_delay import NetworkDelay

LAB = "fbench"
CLIENT, L2 = "netshoot-0", "fortio-server-l2-0"
PORT = 9996
_STAMP = struct.Struct("!Id")


def ping(env: LocalEnv, pps: float, seconds: float) -> dict[str, Any]:
    """UDP ping netshoot → L2 (echo) at ``pps`` for ``seconds``: RTTs in ms and counts."""
    echo = netns_socket(env.pod_shell(L2).netns, socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((env.pod(L2).ip, PORT))
    echo.settimeout(0.2)
    client = netns_socket(env.pod_shell(CLIENT).netns, socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(0.2)
    stop = threading.Event()
    rtts: list[float] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = echo.recvfrom(64)
            except TimeoutError:
                continue
            echo.sendto(data, peer)

    def receive() -> None:
        while not stop.is_set():
            try:
                data = client.recv(64)
            except TimeoutError:
                continue
            rtts.append((time.perf_counter() - _STAMP.unpack(data)[1]) * 1000)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve, receive)]
    for t in threads:
        t.start()
    dest, sent, start = (env.pod(L2).ip, PORT), 0, time.perf_counter()
    with echo, client:
        while (elapsed := time.perf_counter() - start) < seconds:
            while sent < pps * elapsed:
                client.sendto(_STAMP.pack(sent, time.perf_counter()), dest)
                sent += 1
            time.sleep(0.0005)
        time.sleep(0.5)  # the last pings' way back
        stop.set()
        for t in threads:
            t.join(timeout=2)
    return {"sent": sent, "received": len(rtts), "rtts_ms": rtts,
            "achieved_pps": sent / seconds}


def agent_summary(fault: NetworkDelay) -> dict[str, Any]:
    """The agent's exit line (counts and ``cpu_s``)."""
    out = STATE_ROOT / LAB / f"netem-{fault.delay_id}.out"
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def delay_rounds(env: LocalEnv, rounds: int, pps: float, seconds: float) -> list[dict]:
    out = []
    for _ in range(rounds):
        base = ping(env, pps, seconds)
        fault = NetworkDelay(target=L2, delay_ms=20, jitter_ms=5, direction="ingress")
        with active(fault, env):
            delayed = ping(env, pps, seconds)
        summary = agent_summary(fault)
        base_med = statistics.median(base["rtts_ms"])
        out.append({"baseline_median_ms": round(base_med, 3),
                    "added_median_ms": round(statistics.median(delayed["rtts_ms"]) - base_med, 3),
                    "stdev_ms": round(statistics.stdev(delayed["rtts_ms"]), 3),
                    "p99_added_ms": round(sorted(delayed["rtts_ms"])[int(0.99 * len(
                        delayed["rtts_ms"]))] - base_med, 3),
                    "received": delayed["received"], "sent": delayed["sent"],
                    "agent": summary,
                    "agent_vcpu_per_1000pps": round(summary.get("cpu_s", 0) / seconds
                                                    / (pps / 1000), 4)})
    return out


def rate_ladder(env: LocalEnv, rates: list[int], seconds: float) -> list[dict]:
    out = []
    for pps in rates:
        base = ping(env, pps, seconds)
        with active(NetworkDelay(target=L2, delay_ms=1, direction="ingress"), env):
            faulted = ping(env, pps, seconds)
        out.append({"offered_pps": pps, "sender_pps": round(base["achieved_pps"]),
                    "baseline_returned": base["received"] / max(1, base["sent"]),
                    "faulted_returned": faulted["received"] / max(1, faulted["sent"])})
    return out


def one_way(env: LocalEnv, n: int, pps: float = 5000, **effects: float) -> int:
    """Datagrams received of ``n`` sent netshoot → L2 at ``pps`` under the fault."""
    rx = netns_socket(env.pod_shell(L2).netns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tx = netns_socket(env.pod_shell(CLIENT).netns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((env.pod(L2).ip, PORT + 1))
    rx.settimeout(1.0)
    got = [0]

    def receive() -> None:
        while True:
            try:
                rx.recv(64)
            except TimeoutError:
                return  # a second of silence after the last datagram
            got[0] += 1

    receiver = threading.Thread(target=receive, daemon=True)
    with rx, tx, active(NetworkDelay(target=CLIENT, **effects), env):
        receiver.start()
        start = time.perf_counter()
        for i in range(n):
            while i > pps * (time.perf_counter() - start):
                time.sleep(0.0005)
            tx.sendto(str(i).encode(), (env.pod(L2).ip, PORT + 1))
        receiver.join(timeout=10)
    return got[0]


def binomial(n: int, p: float, got: int) -> dict[str, Any]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return {"n": n, "p": p, "got": got, "band": [round(mean - 4 * sd), round(mean + 4 * sd)],
            "met": abs(got - mean) <= 4 * sd}


def markdown(doc: dict) -> str:
    d = doc["delay"]
    added = [r["added_median_ms"] for r in d]
    stdev = [r["stdev_ms"] for r in d]
    cpu = [r["agent_vcpu_per_1000pps"] for r in d]
    a = doc["args"]
    def row(name: str, target: str, values: list[float], goal: float | None,
            tolerance: float = 1.0) -> str:
        med = statistics.median(values)
        met = "–" if goal is None else ("yes" if abs(med - goal) <= tolerance else "no")
        return (f"| {name} | {target} | {med:.3f} | {min(values):.3f} | {max(values):.3f} "
                f"| {met} |")

    intro = (f"Delay asked: 20 ms ± 5 ms (normal) on L2's ingress, UDP ping at {a['pps']:g} "
             f"pps for {a['seconds']:g} s, {a['rounds']} rounds (median, min, max).")
    lines = ["# network-delay (userspace netem over NFQUEUE): accuracy and cost", "",
             _common.machine_line(doc["machine"]), "", intro, "",
             "| measure | target | median | min | max | met |", "|---|---|---|---|---|---|",
             row("added RTT median (ms)", "20 ± 1", added, 20),
             row("RTT standard deviation (ms)", "5 ± 1", stdev, 5),
             row("agent vCPU per 1000 pps", "report", cpu, None), "",
             ("| offered pps | sender reached | returned without fault "
              "| returned with 1 ms delay |"), "|---|---|---|---|"]
    for r in doc["ladder"]:
        lines.append(f"| {r['offered_pps']} | {r['sender_pps']} | {r['baseline_returned']:.3f}"
                     f" | {r['faulted_returned']:.3f} |")
    bound = "at least " if doc["max_pps"] == doc["max_measurable_pps"] else ""
    ceiling = (f"Maximum sustainable rate (≥ 95 % of the pings returned, relative to the "
               f"same rate without the fault): {bound}{doc['max_pps']} pps. Above "
               f"{doc['max_measurable_pps']} pps the benchmark's own Python ping loses > 5 % "
               f"without any fault, so higher rates do not measure the agent.")
    lines += ["", ceiling, "",
              "| effect | n | expected share | counted | 4σ band | met |", "|---|---|---|---|---|---|"]
    for name, b in doc["binomial"].items():
        lines.append(f"| {name} | {b['n']} | {b['p']:.0%} | {b['got']} | "
                     f"{b['band'][0]}–{b['band'][1]} | {'yes' if b['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the measurements and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pps", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with _common.bench_run("mlfaults-") as (started, _workdir):
        env = LocalEnv(lab=LAB)
        lab_up(env)
        try:
            delay = delay_rounds(env, args.rounds, args.pps, args.seconds)
            ladder = rate_ladder(env, [1000, 2000, 5000, 10000, 20000, 40000, 80000], 3)
            measurable = [r for r in ladder if r["baseline_returned"] >= 0.95]
            ok = [r["offered_pps"] for r in measurable
                  if r["faulted_returned"] >= 0.95 * r["baseline_returned"]]
            n = 10000
            doc = {"machine": _common.machine_info(),
                   "args": vars(args) | {"out": str(args.out)},
                   "delay": delay, "ladder": ladder, "max_pps": max(ok, default=0),
                   "max_measurable_pps": max((r["offered_pps"] for r in measurable), default=0),
                   "binomial": {
                       "loss 10 %": binomial(n, 0.9, one_way(env, n, loss_pct=10)),
                       "duplicate 10 %": binomial(n, 0.1, one_way(env, n, duplicate_pct=10)
                                                  - n)}}
        finally:
            lab_down(env)
    _common.write_results(args.out, "faults", started, doc, markdown(doc))


if __name__ == "__main__":
    main()
