"""Benchmark: accuracy and throughput of meshlab's load engine (``meshlab/load/``).

``.venv/bin/python benchmarks/load.py [--duration-s 8] [--skip throughput,rate,latency]``
(root, ~2.5 min). Writes ``benchmarks/results/load-<UTC timestamp>.json`` and
``benchmarks/results/load-latest.md``.

Topology (:mod:`meshlab.envs.local.veth_pair`, no capture rules; namespaces
``mlbench-<rand>a|b``, always removed, also on SIGINT/SIGTERM; nothing in the host netns)::

    client netns 10.244.1.2 ──veth── server netns 10.244.1.3
      generators, core 1               nginx :8080 (1 KB return 200, 1 worker), core 0
                                       stall server :8081 (benchmarks/_stall_server.py), core 0

1. **Throughput per load process** against nginx, same connection count and duration: meshlab's
   runner (closed loop, HDR recording on), the open-loop runner at a rate above what one process
   sends, plain Locust ``FastHttpUser`` (``_plain_locustfile.py``) and ``wrk -t1``
   (:mod:`_generators`). Target: meshlab ≥ 1.0× plain Locust (own req/s, one process each).
2. **Rate accuracy**: the open-loop runner at 1,000 and 5,000 rps against nginx; achieved rate
   within 1 % of the target; late and skipped requests.
3. **Latency accuracy**: the open-loop runner at a constant rate against the stall server
   (one pause of known length at a known request); corrected p99/p99.9 within 10 % of the
   exactly computed distribution (:func:`_stall_server.expected_percentiles`), uncorrected
   numbers beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _generators as gen
import _nginx
import _procs
from _common import bench_run, machine_info, write_results
from _load_report import TARGETS, markdown, summarise
from _stall_server import StallPlan, expected_percentiles

from meshlab.envs.local.veth_pair import VethPair, connect_in_netns, veth_pair

A_IP, B_IP = "10.244.1.2", "10.244.1.3"
APP_PORT, STATUS_PORT, STALL_PORT = 8080, 8079, 8081
SERVER_CPU, CLIENT_CPU = "0", "1"
APP_USER = "65534:65534"
OPEN_LOOP_FLOOD_RPS = 50_000.0
"""Open-loop rate of the throughput run: more than one process can send, so it shows the
process's ceiling (most requests are then late)."""


def nginx_served(ns: str) -> int:
    """Requests nginx has handled so far (its ``stub_status``, asked from inside ``ns``)."""
    with connect_in_netns(ns, ("127.0.0.1", STATUS_PORT), timeout_s=2.0) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    body = b"".join(chunks).decode().split("\r\n\r\n", 1)[1]
    return _nginx.handled_requests(body)


def _run(pair: VethPair, role: str, argv: list[str], workdir: Path, timeout_s: float) -> dict:
    """One sampled generator run: exit status plus the steady-window figures."""
    print(f"load.py: {role} …", file=sys.stderr)
    code, samples = gen.run_sampled(pair.ns_a, argv, cpu=CLIENT_CPU, role=role, logdir=workdir,
                                    timeout_s=timeout_s, served=lambda: nginx_served(pair.ns_b))
    if code != 0:
        err = (workdir / f"{role}.err").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{role} exited {code}: {err}")
    return {"steady": gen.steady(samples)}


def throughput(pair: VethPair, args: argparse.Namespace, workdir: Path) -> dict[str, dict]:
    """Every generator against nginx, one process each, ``args.conns`` connections,
    ``args.throughput_s`` seconds; ``args.rounds`` rounds, the order rotated each round."""
    url, d, c = f"http://{B_IP}:{APP_PORT}/", args.throughput_s, args.conns

    def meshlab(role: str, open_loop_rps: float | None = None) -> dict:
        res = workdir / f"{role}.json"
        rec = _run(pair, role, gen.meshlab_argv(url, c, d, res, open_loop_rps), workdir, d + 60)
        return {**rec, **_strip(gen.meshlab_own(res))}

    def locust(role: str) -> dict:
        rec = _run(pair, role, gen.locust_argv(f"http://{B_IP}:{APP_PORT}", c, d,
                                               workdir / role), workdir, d + 60)
        return {**rec, **gen.locust_own(workdir / role)}

    def wrk(role: str) -> dict:
        rec = _run(pair, role, gen.wrk_argv(url, c, d), workdir, d + 60)
        return {**rec, **gen.wrk_own((workdir / f"{role}.out").read_text())}

    runs: list[tuple[str, Callable[[str], dict]]] = [
        ("meshlab closed-loop", meshlab),
        ("meshlab open-loop", lambda role: meshlab(role, OPEN_LOOP_FLOOD_RPS)),
        ("locust", locust), ("wrk", wrk)]
    out: dict[str, dict] = {name: {"rounds": []} for name, _ in runs}
    for r in range(args.rounds):
        for name, run in runs[r % len(runs):] + runs[:r % len(runs)]:
            out[name]["rounds"].append(run(f"{name.replace(' ', '-')}-{r}"))
    return out


def _strip(own: dict) -> dict:
    """A runner's figures without the bulky result (HDR text, series)."""
    res = own.pop("result")
    own.update({k: res[k] for k in ("late", "skipped", "mode") if k in res})
    return own


def rate_accuracy(pair: VethPair, args: argparse.Namespace, workdir: Path) -> list[dict]:
    """The open-loop runner at each target rate against nginx."""
    url = f"http://{B_IP}:{APP_PORT}/"
    rows = []
    for rate in args.rates:
        res = workdir / f"rate-{rate:g}.json"
        argv = gen.meshlab_argv(url, args.conns, args.duration_s, res, rate)
        rec = _run(pair, f"rate-{rate:g}", argv, workdir, args.duration_s + 60)
        result = json.loads(res.read_text())
        rows.append({"target_rps": rate, "duration_s": args.duration_s, **rec,
                     **{k: result.get(k) for k in ("requests", "errors", "tps", "late",
                                                   "skipped", "late_threshold_us",
                                                   "start_epoch_s", "end_epoch_s")},
                     "per_second": [p["requests"] for p in result["series"]],
                     "latency_us": result["latency_us"],
                     "latency_uncorrected_us": result.get("latency_uncorrected_us")})
    return rows


def latency_accuracy(pair: VethPair, args: argparse.Namespace, workdir: Path) -> dict:
    """The open-loop runner against the stall server; measured vs computed percentiles."""
    rate, d = args.stall_rate_rps, args.duration_s
    n = int(rate * d)
    plan = StallPlan(stall_at=(n // 2,), stall_s=args.stall_s)
    argv = [gen.PY, str(HERE / "_stall_server.py"), "--host", B_IP, "--port", str(STALL_PORT),
            "--stall-at", ",".join(map(str, plan.stall_at)), "--stall-s", str(plan.stall_s)]
    server = _procs.start(pair.ns_b, argv, cpu=SERVER_CPU, logdir=workdir, role="stall-server")
    try:
        _procs.wait_port(pair.ns_b, (B_IP, STALL_PORT), server)
        res = workdir / "stall.json"
        run = gen.meshlab_argv(f"http://{B_IP}:{STALL_PORT}/", args.stall_conns, d, res, rate)
        print("load.py: stall …", file=sys.stderr)
        proc = subprocess.run(["ip", "netns", "exec", pair.ns_a, "taskset", "-c", CLIENT_CPU,
                               *run], capture_output=True, text=True, timeout=d + 60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"stall run exited {proc.returncode}: {proc.stderr[-1500:]}")
    finally:
        _procs.stop([server])
    lines = (workdir / "stall-server.out").read_text().splitlines()
    server_log = json.loads(lines[-1]) if len(lines) > 1 else {}
    result = json.loads(res.read_text())
    return {"rate_rps": rate, "duration_s": d, "connections": args.stall_conns,
            "stall_at": list(plan.stall_at), "stall_s": plan.stall_s,
            "expected_us": expected_percentiles(rate, n, plan),
            "corrected_us": result["latency_us"],
            "uncorrected_us": result.get("latency_uncorrected_us"),
            **{k: result.get(k) for k in ("requests", "late", "skipped", "tps")},
            "server": server_log}


def run_all(args: argparse.Namespace, workdir: Path) -> dict:
    """Every part on one topology; returns the raw records."""
    tag = secrets.token_hex(3)
    pair = VethPair(f"mlbench-{tag}a", f"mlbench-{tag}b", A_IP, B_IP)
    doc: dict = {}
    with veth_pair(pair, capture=False):
        app_dir = workdir / "app"
        conf = _nginx.write_config(app_dir, _nginx.app_config(app_dir, APP_PORT, STATUS_PORT))
        app = _procs.start(pair.ns_b, _nginx.nginx_argv(conf), cpu=SERVER_CPU, logdir=workdir,
                           role="app", user=APP_USER)
        try:
            _procs.wait_port(pair.ns_b, (B_IP, APP_PORT), app)
            if "throughput" not in args.skip:
                doc["throughput"] = throughput(pair, args, workdir)
            if "rate" not in args.skip:
                doc["rate"] = rate_accuracy(pair, args, workdir)
        finally:
            _procs.stop([app])
        if "latency" not in args.skip:
            doc["latency"] = latency_accuracy(pair, args, workdir)
    return doc


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when the run completed (targets met or not)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--throughput-s", type=float, default=5.0,
                    help="length of each throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="throughput runs per generator")
    ap.add_argument("--duration-s", type=float, default=8.0,
                    help="length of each rate and latency run")
    ap.add_argument("--conns", type=int, default=16, help="connections (users) of every run")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                    default=[1000.0, 5000.0], help="open-loop target rates, rps")
    ap.add_argument("--stall-rate-rps", type=float, default=1000.0)
    ap.add_argument("--stall-s", type=float, default=0.5, help="the stall server's pause")
    ap.add_argument("--stall-conns", type=int, default=8)
    ap.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(),
                    help="parts to leave out: throughput,rate,latency")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    with bench_run("mlbench-load-") as (started, workdir):
        doc = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(),
               "settings": {"throughput_s": args.throughput_s, "duration_s": args.duration_s,
                            "conns": args.conns,
                            "rounds": args.rounds, "rates_rps": args.rates,
                            "stall_rate_rps": args.stall_rate_rps, "stall_s": args.stall_s,
                            "stall_conns": args.stall_conns, "server_cpu": SERVER_CPU,
                            "client_cpu": CLIENT_CPU,
                            "server": f"nginx return 200, {_nginx.BODY_BYTES} B, 1 worker"},
               **run_all(args, workdir), "targets": TARGETS}
    doc["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    doc["summary"] = summarise(doc)
    write_results(args.out, "load", started, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
