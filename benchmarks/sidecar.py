"""Benchmark: meshlab's sidecar pair vs an nginx pair vs direct, on one netns topology.

``.venv/bin/python benchmarks/sidecar.py [--duration-s 10] [--profile]`` (root). Writes
``benchmarks/results/sidecar-<date>.json`` and ``benchmarks/results/sidecar-latest.md``.

Topology (:mod:`meshlab.envs.local.veth_pair`; namespaces ``mlbench-<rand>a|b``, always removed,
also on SIGINT/SIGTERM)::

    client netns 10.244.1.2 ──veth── server netns 10.244.1.3 (app: nginx return 200, 1 KB, :8080)

Modes: ``direct`` (no capture rules; client → 10.244.1.3:8080); ``meshlab`` (Istio capture rules
in both namespaces, ENVOY.md §6; client → ClusterIP 10.96.0.12:8080 → sidecar A 15001 →
sidecar B 15006 → app from 127.0.0.6), one process per sidecar (``--concurrency 1``);
``meshlab-c2`` (the same with a main and two workers per sidecar, Istio's default); ``nginx`` (same rules and path, nginx A on 15001 proxies
to 10.244.1.3:8080, nginx B on 15006 to the app with ``proxy_bind 127.0.0.6``).
CPU pinning on the 2-core machine: both proxies on core 0; load client and app on core 1.
See ``benchmarks/README.md`` for the method.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _nginx
import _procs
from _common import bench_run, machine_info, write_results
from _procs import Proc
from _report import TARGETS, markdown, summarise

from meshlab.envs.local.veth_pair import (
    VethPair,
    install_capture,
    remove_capture,
    veth_pair,
)

ROOT = HERE.parent
PY = str(ROOT / ".venv" / "bin" / "python")
A_IP, B_IP, CLUSTER_IP, APP_PORT = "10.244.1.2", "10.244.1.3", "10.96.0.12", 8080
FQDN = "fortio-server.mark.svc.cluster.local"
PROXY_CPU, CLIENT_CPU = "0", "1"
PROXY_USER, APP_USER = "1337:1337", "65534:65534"
#: meshlab modes and their ``--concurrency`` (Envoy workers; Istio's sidecar default is 2).
MESHLAB_MODES = {"meshlab": 1, "meshlab-c2": 2}


def sidecar_config(pod: str, ip: str, workload: str, workdir: Path) -> dict:
    """``sidecar.json`` with Istio defaults: TEXT access log to a file, default stats set."""
    return {
        "pod": {"name": pod, "namespace": "mark", "ip": ip, "workload": workload,
                "app": workload, "version": "v1", "service_account": "default", "node": "n1",
                "cluster_id": "Kubernetes"},
        "inbound": [{"port": APP_PORT, "name": "http", "protocol": "http"}],
        "services": [{"name": "fortio-server", "namespace": "mark", "fqdn": FQDN,
                      "cluster_ip": CLUSTER_IP,
                      "ports": [{"port": APP_PORT, "name": "http", "protocol": "http",
                                 "target_port": APP_PORT}],
                      "endpoints": [{"ip": B_IP, "pod": "fortio-server-0"}]}],
        "access_log_path": str(workdir / "access.log"),
        "access_log_encoding": "TEXT",
    }


def start_sidecars(pair: VethPair, workdir: Path, concurrency: int = 1) -> list[Proc]:
    """Sidecar A (client pod) and B (server pod), bound as root then running as uid 1337, each
    with ``concurrency`` workers (1: one process; N: a main and N worker processes)."""
    procs = []
    for side, ns, ip, wl in (("a", pair.ns_a, A_IP, "fortio-client"),
                             ("b", pair.ns_b, B_IP, "fortio-server")):
        d = workdir / f"sidecar-{side}"
        d.mkdir(mode=0o777, exist_ok=True)
        d.chmod(0o777)
        cfg = d / "sidecar.json"
        cfg.write_text(json.dumps(sidecar_config(f"{wl}-0", ip, wl, d)))
        argv = [PY, "-m", "meshlab.proxy", "--config", str(cfg), "--uid", "1337", "--gid", "1337",
                "--concurrency", str(concurrency)]
        procs.append(_procs.start(ns, argv, cpu=PROXY_CPU, logdir=workdir, role=f"sidecar-{side}"))
    _procs.wait_port(pair.ns_a, ("127.0.0.1", 15001), procs[0])
    _procs.wait_port(pair.ns_b, ("127.0.0.1", 15006), procs[1])
    return procs


def start_nginx_pair(pair: VethPair, workdir: Path) -> list[Proc]:
    """nginx A on 15001 → B's pod IP; nginx B on 15006 → app via 127.0.0.6 (uid 1337)."""
    procs = []
    for side, ns, port, up, bind in (("a", pair.ns_a, 15001, f"{B_IP}:{APP_PORT}", None),
                                     ("b", pair.ns_b, 15006, f"{B_IP}:{APP_PORT}", "127.0.0.6")):
        conf = _nginx.write_config(workdir / f"nginx-{side}",
                                   _nginx.proxy_config(workdir / f"nginx-{side}", port, up, bind))
        procs.append(_procs.start(ns, _nginx.nginx_argv(conf), cpu=PROXY_CPU, logdir=workdir,
                                  role=f"nginx-{side}", user=PROXY_USER))
    _procs.wait_port(pair.ns_a, ("127.0.0.1", 15001), procs[0])
    _procs.wait_port(pair.ns_b, ("127.0.0.1", 15006), procs[1])
    return procs


def run_fixed(ns: str, target: tuple[str, int], proxies: list[Proc], args: argparse.Namespace,
              on_measure=None) -> dict:
    """Fixed-rate run from ``ns``; adds per-proxy CPU over the measured window and RSS."""
    op = {"host": target[0], "port": target[1], "path": "/", "authority": f"{FQDN}:{APP_PORT}",
          "rate_rps": args.rate_rps, "warmup_s": args.warmup_s, "duration_s": args.duration_s,
          "conns": args.conns}
    argv = ["ip", "netns", "exec", ns, "taskset", "-c", CLIENT_CPU, PY,
            str(HERE / "_loadgen.py"), json.dumps(op)]
    cpu0: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    result: dict = {}
    profiler = None
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as gen:
        assert gen.stdout is not None
        for line in gen.stdout:
            event = json.loads(line)
            if event["event"] == "measure_start":
                cpu0 = {p.role: _procs.cpu_s(p.pids()) for p in proxies}
                profiler = on_measure() if on_measure else None
            elif event["event"] == "measure_end":
                cpu1 = {p.role: _procs.cpu_s(p.pids()) for p in proxies}
            else:
                result = event
        gen.wait(timeout=60)
    if profiler is not None:
        profiler.wait(timeout=60)
    result.pop("event", None)
    result["proxy_cpu_s"] = {r: round(cpu1[r] - cpu0[r], 3) for r in cpu0}
    result["rss_kb"] = {p.role: {str(pid): _procs.rss_kb(pid) for pid in p.pids()}
                        for p in proxies}
    return result


def run_max(ns: str, target: tuple[str, int], proxies: list[Proc], args: argparse.Namespace
            ) -> dict:
    """Closed-loop ``wrk -t1 -c<conns>`` for ``max_s``; RPS and RPS per proxy CPU-second."""
    url = f"http://{target[0]}:{target[1]}/"
    before = sum(_procs.cpu_s(p.pids()) for p in proxies)
    out = subprocess.run(["ip", "netns", "exec", ns, "taskset", "-c", CLIENT_CPU, "wrk", "-t1",
                          f"-c{args.conns}", f"-d{args.max_s}s", "-H", f"Host: {FQDN}", url],
                         capture_output=True, text=True, timeout=args.max_s + 60, check=True)
    used = sum(_procs.cpu_s(p.pids()) for p in proxies) - before
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out.stdout)
    rps = float(m.group(1)) if m else 0.0
    res = {"rps": rps, "errors": errors.group(0) if errors else None,
           "proxy_cpu_s": round(used, 3)}
    if proxies and used > 0:
        res["rps_per_proxy_core"] = round(rps * args.max_s / used, 1)
    return res


def py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` with py-spy (raw collapsed stacks) for ``seconds``; None if not installed."""
    exe = Path(PY).parent / "py-spy"
    if not exe.exists():
        return None
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "--duration",
                             str(int(seconds)), "--rate", "250", "--format", "raw", "--nonblocking",
                             "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run_mode(pair: VethPair, mode: str, workdir: Path, args: argparse.Namespace, *,
             profile: bool) -> dict:
    """One round of one mode: proxies (if any) up, fixed-rate then closed-loop runs, down."""
    procs: list[Proc] = []
    try:
        if mode == "direct":
            target = (B_IP, APP_PORT)
        else:
            install_capture(pair.ns_a)
            install_capture(pair.ns_b)
            target = (CLUSTER_IP, APP_PORT)
            procs = (start_sidecars(pair, workdir, MESHLAB_MODES[mode]) if mode in MESHLAB_MODES
                     else start_nginx_pair(pair, workdir))
        hook = None
        raw = workdir / "profile-a.txt"
        if profile:
            hook = functools.partial(py_spy, procs[0].pid, raw, args.duration_s)
        rec = {"fixed": run_fixed(pair.ns_a, target, procs, args, hook),
               "max": run_max(pair.ns_a, target, procs, args)}
        if hook is not None and raw.exists():
            rec["profile_raw"] = str(raw)
        return rec
    finally:
        _procs.stop(procs)
        if mode != "direct":
            remove_capture(pair.ns_a)
            remove_capture(pair.ns_b)


def run_all(args: argparse.Namespace, workdir: Path) -> dict:
    """All three modes on one topology; returns the raw per-mode records."""
    tag = secrets.token_hex(3)
    pair = VethPair(f"mlbench-{tag}a", f"mlbench-{tag}b", A_IP, B_IP)
    modes: dict[str, dict] = {}
    with veth_pair(pair, capture=False):
        app_dir = workdir / "app"
        conf = _nginx.write_config(app_dir, _nginx.app_config(app_dir, APP_PORT))
        app = _procs.start(pair.ns_b, _nginx.nginx_argv(conf), cpu=CLIENT_CPU, logdir=workdir,
                           role="app", user=APP_USER)
        _procs.wait_port(pair.ns_b, (B_IP, APP_PORT), app)
        order = ["direct", *MESHLAB_MODES, "nginx"]
        for rnd in range(args.rounds):
            k = rnd % len(order)
            for mode in order[k:] + order[:k]:  # rotated: no mode always first
                print(f"sidecar.py: round {rnd + 1}/{args.rounds} mode {mode} …", file=sys.stderr)
                rec = run_mode(pair, mode, workdir, args,
                               profile=args.profile and rnd == 0 and mode == "meshlab")
                modes.setdefault(mode, {"rounds": []})["rounds"].append(rec)
        _procs.stop([app])
    return modes


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when the run completed (targets met or not)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate-rps", type=float, default=1000.0)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--max-s", type=int, default=5, help="closed-loop run length")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per mode, in rotated order (median and min–max reported)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy sidecar A (first round's fixed-rate run)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    with bench_run("mlbench-") as (started, workdir):
        modes = run_all(args, workdir)
        profile = None
        first = modes.get("meshlab", {}).get("rounds", [{}])[0]
        if "profile_raw" in first:
            from _profile import top_frames
            profile = top_frames(Path(first.pop("profile_raw")), first["fixed"]["requests"])
    doc = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(),
           "settings": {"rounds": args.rounds, "rate_rps": args.rate_rps, "conns": args.conns, "warmup_s": args.warmup_s,
                        "duration_s": args.duration_s, "max_s": args.max_s,
                        "response_bytes": _nginx.BODY_BYTES, "proxy_cpu": PROXY_CPU,
                        "client_and_app_cpu": CLIENT_CPU, "app": "nginx return 200 (1 KB)",
                        "access_logs": "on (sidecar TEXT, nginx combined; file; nginx one write per request, sidecar one write per loop pass)"},
           "modes": modes, "targets": TARGETS}
    doc["summary"] = summarise(doc)
    if profile:
        doc["profile_sidecar_a"] = profile
    write_results(args.out, "sidecar", started, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
