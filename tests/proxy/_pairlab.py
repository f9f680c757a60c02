"""Two-pod sidecar lab in REAL network namespaces (needs root), shared by the proxy tests.

Topology (two namespaces joined by a veth pair, nothing in the host namespace)::

    mltest-proxy-<rand>a  10.244.1.2  client pod: sidecar A (uid 1337) + istio nat rules
    mltest-proxy-<rand>b  10.244.1.3  server pod: sidecar B (uid 1337) + istio nat rules + app

The client (root, so captured) calls the ClusterIP 10.96.0.12:8080; sidecar A resolves it to
10.244.1.3:8080 via SO_ORIGINAL_DST, B captures it on 15006 and calls the app from 127.0.0.6.
Use :func:`pair_lab` (a context manager) from a module-scoped fixture; pass ``overrides`` to
change ``sidecar.json`` (e.g. ``{"policies": {...}}``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

from meshlab.envs.local.netns import delete_netns
from meshlab.envs.local.veth_pair import VethPair, build_veth_pair, install_capture

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
HERE = Path(__file__).resolve().parent
FQDN = "fortio-server.mark.svc.cluster.local"
CLUSTER = f"outbound|8080||{FQDN}"
A_IP, B_IP = "10.244.1.2", "10.244.1.3"



def _run(argv: list[str], input_text: str | None = None, timeout_s: float = 30) -> str:
    res = subprocess.run(argv, input=input_text, capture_output=True, text=True,
                         timeout=timeout_s, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res.stdout


def _services() -> list[dict]:
    return [
        {"name": "fortio-server", "namespace": "mark", "fqdn": FQDN, "cluster_ip": "10.96.0.12",
         "ports": [{"port": 8080, "name": "http", "protocol": "http", "target_port": 8080}],
         "endpoints": [{"ip": B_IP, "pod": "fortio-server-0"}]},
        # 15021 is excluded from inbound capture and nothing listens there → connection refused
        {"name": "refused", "namespace": "mark", "fqdn": "refused.mark.svc.cluster.local",
         "cluster_ip": "10.96.0.13",
         "ports": [{"port": 8080, "name": "http", "protocol": "http", "target_port": 15021}],
         "endpoints": [{"ip": B_IP, "pod": "fortio-server-0"}]},
        {"name": "echo", "namespace": "mark", "fqdn": "echo.mark.svc.cluster.local",
         "cluster_ip": "10.96.0.14",
         "ports": [{"port": 9000, "name": "tcp-echo", "protocol": "tcp", "target_port": 9000}],
         "endpoints": [{"ip": B_IP, "pod": "fortio-server-0"}]},
    ]


def _sidecar_config(pod: str, ip: str, workload: str, log: Path) -> dict:
    return {
        "pod": {"name": pod, "namespace": "mark", "ip": ip, "workload": workload, "app": workload,
                "version": "v1", "service_account": "default", "node": "n1",
                "cluster_id": "Kubernetes"},
        "cluster_domain": "cluster.local",
        "inbound": [{"port": 8080, "name": "http", "protocol": "http"},
                    {"port": 9000, "name": "tcp-echo", "protocol": "tcp"}],
        "services": _services(),
        "connect_timeout_s": 2.0,
        "access_log_path": str(log),
        "access_log_encoding": "JSON",
        "stats_inclusion_regexps": [r"cluster\..*fortio.*", r"cluster\..*refused.*",
                                    r"cluster\..*inbound.*", r"http\..*", r"listener\..*"],
        "stats_flush_interval_s": 0.2,
    }


def _merged(base: dict, overrides: dict | None, side: str) -> dict:
    if not overrides:
        return base
    if set(overrides) <= {"a", "b"}:
        overrides = overrides.get(side, {})
    return {**base, **overrides}


class Lab:
    """Handle on the two namespaces, for the tests."""

    def __init__(self, ns_a: str, ns_b: str, workdir: Path) -> None:
        self.ns_a, self.ns_b, self.workdir = ns_a, ns_b, workdir
        self.log_a, self.log_b = workdir / "a" / "access.log", workdir / "b" / "access.log"
        self.procs: list[subprocess.Popen] = []  # sidecar A, sidecar B, app

    def sidecar(self, which: str) -> subprocess.Popen:
        """The process of sidecar ``which`` (``a``/``b``; its main when it has workers)."""
        return self.procs[0 if which == "a" else 1]

    def client(self, ns: str, op: dict, timeout_s: float = 60) -> object:
        out = _run(["ip", "netns", "exec", ns, PY, str(HERE / "_nsclient.py"), json.dumps(op)],
                   timeout_s=timeout_s)
        return json.loads(out)

    def get(self, ns: str, host: str, port: int, path: str, n: int = 1, keepalive: bool = True,
            headers: dict | None = None) -> list[dict]:
        return self.client(ns, {"op": "get", "host": host, "port": port, "path": path,
                                "headers": headers or {}, "n": n, "keepalive": keepalive})

    def log_lines(self, which: str) -> list[dict]:
        path = self.log_a if which == "a" else self.log_b
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_log(self, which: str, predicate, timeout_s: float = 5.0) -> list[dict]:
        """The access log of side ``which`` once ``predicate(lines)`` holds (or the deadline)."""
        return poll(lambda: self.log_lines(which), predicate, timeout_s, interval_s=0.02)


def poll(fn: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 10.0,
         interval_s: float = 0.05) -> T:
    """Call ``fn`` until ``ok(result)`` or the deadline; returns the last result."""
    deadline = time.monotonic() + timeout_s
    result = fn()
    while not ok(result) and time.monotonic() <= deadline:
        time.sleep(interval_s)
        result = fn()
    return result


@contextlib.contextmanager
def pair_lab(overrides: dict | None = None, *, app_ports: tuple[int, ...] = (8080, 9000)
             ) -> Iterator[Lab]:
    """Start the two-pod lab; ``overrides`` are merged into both sidecars' ``sidecar.json``.

    ``overrides`` may be a dict (both sidecars) or ``{"a": {...}, "b": {...}}`` per side.
    Skips the test when not root or iproute2/iptables are missing.
    """
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        pytest.skip("needs root, iproute2 and iptables")
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"mltest-proxy-{tag}a", f"mltest-proxy-{tag}b"
    # pytest's tmp dirs are 0700 root: uid 1337 could not read its config there
    workdir = Path(tempfile.mkdtemp(prefix=f"mltest-proxy-{tag}-"))
    workdir.chmod(0o755)
    procs: list[subprocess.Popen] = []
    try:
        build_veth_pair(VethPair(ns_a, ns_b, A_IP, B_IP))
        for ns in (ns_a, ns_b):
            install_capture(ns)
        for sub, ns, pod, ip, wl in (("a", ns_a, "fortio-client-0", A_IP, "fortio-client"),
                                     ("b", ns_b, "fortio-server-0", B_IP, "fortio-server")):
            d = workdir / sub
            d.mkdir()
            d.chmod(0o777)
            cfg = d / "sidecar.json"
            cfg.write_text(json.dumps(_merged(_sidecar_config(pod, ip, wl, d / "access.log"),
                                               overrides, sub)))
            err = open(d / "sidecar.err", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "setpriv", "--reuid", "1337", "--regid", "1337",
                 "--clear-groups", PY, "-m", "meshlab.proxy", "--config", str(cfg)],
                stdout=subprocess.DEVNULL, stderr=err, cwd=str(ROOT)))
            err.close()
        app_err = open(workdir / "app.err", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns_b, PY, str(HERE / "_app.py"),
                                       *map(str, app_ports)], stdout=subprocess.DEVNULL, stderr=app_err))
        app_err.close()
        lab = Lab(ns_a, ns_b, workdir)
        lab.procs = procs
        for ns, port in ((ns_a, 15000), (ns_a, 15001), (ns_b, 15006), (ns_b, 15090)):
            res = lab.client(ns, {"op": "wait", "host": "127.0.0.1", "port": port,
                                  "timeout_s": 10})
            assert res["ok"], f"{ns}:{port} never accepted: {res}"
        for port in app_ports:
            assert lab.client(ns_b, {"op": "wait", "host": B_IP, "port": port,
                                     "timeout_s": 10})["ok"]
        yield lab
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for ns in (ns_a, ns_b):  # anything still inside was started by us
            delete_netns(ns)
        for d in ("a", "b"):
            err = workdir / d / "sidecar.err"
            if err.exists() and err.read_text().strip():
                print(f"sidecar {d} stderr:\n{err.read_text()}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
