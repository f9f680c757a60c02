"""The lab's real Prometheus (Debian ``/usr/bin/prometheus``), for real (lab ``prom``).

Acceptance for issue #5: the server runs in the lab's cluster netns and scrapes every meshed
pod's 15090 and 15020 every scrape interval (5 s), at idle CPU priority; a bounded baseline
load's request count read from Prometheus equals the count read from the sidecars' admin ``/stats``; a powered-off node's
targets go ``up == 0`` while the others stay 1. The host netns is never changed: the runner's
queries go through a thread inside the cluster netns.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from meshlab.collectors import prometheus as queries
from meshlab.collectors.envoy_stats import delta, snapshot
from meshlab.envs.idle import policy_of
from meshlab.envs.local import prometheus as server
from meshlab.envs.local.netns_socket import netns_connect, netns_socket, run_in_netns
from meshlab.envs.local.state import LabState
from meshlab.errors import LabError
from meshlab.experiment import Run
from meshlab.faults.base import active
from meshlab.faults.node_poweroff import NodePowerOff
from meshlab.journal import RunJournal
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "prom"
URL = "http://fortio-server:8070/echo?size=100"
REQUESTS = 300
NODE = "worknode6"
_REPORTER = re.compile(r"^istiocustom\.istio_requests_total\.reporter\.(\w+)\.")


@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab(LAB) as env:
        yield env


@pytest.fixture(scope="module")
def prom(lab):
    """``(env, client, start seconds)`` with the server started once for the module."""
    started = time.monotonic()
    url = lab.start_prometheus()
    elapsed_s = time.monotonic() - started
    assert url == "http://172.18.0.1:9090"
    yield lab, lab.prometheus(), elapsed_s
    lab.stop_prometheus()


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _pss_kb(pid: int) -> int:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE).group(1))


def _meshed(env) -> dict[str, object]:
    return {p.name: p for p in env.pods() if p.meshed}


def _up(client) -> dict[tuple[str, str], float]:
    return {(s["labels"]["pod"], s["labels"]["job"]): s["value"] for s in client.query("up")}


def test_server_runs_in_the_cluster_netns_and_scrapes_every_meshed_pod(prom, host_snapshot):
    env, client, start_s = prom
    pid = LabState.load(LAB).pids[server.PID_KEY]
    print(f"\nprometheus: ready with every target scraped in {start_s:.2f} s, "
          f"RSS {_rss_kb(pid) / 1024:.1f} MiB")
    assert env.start_prometheus() == server.server_url(env.plan)  # idempotent
    assert LabState.load(LAB).pids[server.PID_KEY] == pid
    netns = Path("/run/netns") / env.plan.cluster_netns
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
    assert os.stat(f"/proc/{pid}").st_uid != 0  # the Debian package's prometheus user
    meshed = _meshed(env)
    for job, port in server.JOBS.items():
        groups = json.loads(server.targets_file(LAB, job).read_text())
        assert {g["labels"]["pod"]: g["targets"] for g in groups} == {
            name: [f"{p.ip}:{port}"] for name, p in meshed.items()}
    targets = client.targets()
    assert sorted((t["labels"]["pod"], t["job"], t["health"]) for t in targets) == sorted(
        (name, job, "up") for name in meshed for job in server.JOBS)
    assert all(t["url"].endswith("/stats/prometheus") for t in targets)
    labels = next(s["labels"] for s in client.query('up{job="envoy-stats"}')
                  if s["labels"]["pod"] == "fortio-server-l2-0")
    assert {k: labels[k] for k in ("namespace", "node", "app")} == {
        "namespace": "mark", "node": NODE, "app": "fortio-server-l2"}
    assert set(_up(client).values()) == {1.0}


def test_server_runs_at_idle_cpu_priority(prom):
    _, client, _ = prom
    pid = LabState.load(LAB).pids[server.PID_KEY]
    threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    policies = {tid: policy_of(pid, tid) for tid in threads}
    print(f"\nprometheus pid {pid}: {len(threads)} threads, policies "
          f"{sorted(set(policies.values()))}")
    assert Path(f"/proc/{pid}/exe").resolve() == Path(server.PROMETHEUS_BIN).resolve()
    assert set(policies.values()) == {"SCHED_IDLE"}
    assert server.configured_interval_s(LAB) == server.SCRAPE_INTERVAL_S == 5
    assert client.scrape_interval_s == 5


def _admin_requests(env) -> dict[tuple[str, str], int]:
    """``(pod, reporter) -> istio_requests_total`` summed over the sidecars' admin ``/stats``."""
    out: dict[tuple[str, str], int] = {}
    for pod in _meshed(env):
        for name, value in snapshot(env, pod, "istio_requests_total").items():
            key = (pod, _REPORTER.match(name).group(1))
            out[key] = out.get(key, 0) + value
    return out


def test_prometheus_request_counts_equal_the_admin_counts(prom, tmp_path):
    env, client, _ = prom
    run = Run(env, RunJournal(tmp_path, "prometheus-baseline"))
    before = _admin_requests(env)
    start = time.time()
    load = run.load("baseline", URL, users=4, duration_s=30, max_requests=REQUESTS)
    end = time.time()
    assert load.requests == REQUESTS and load.errors == 0
    data = queries.record(run.journal, client, start, end)
    assert data["error"] is None, data["error"]
    after = _admin_requests(env)
    admin = {k: v for k, v in delta(before, after).items() if v}  # type: ignore[arg-type]
    prom_counts = {(r["labels"]["pod"], r["labels"]["reporter"]): r["value"]
                   for r in queries.result_of(data, "requests_total") if r["value"]}
    print(f"\nrequests over the window: prometheus {prom_counts}, admin /stats {admin}")
    assert prom_counts == pytest.approx(admin, rel=0.01)
    assert prom_counts == {("fortio-server-0", "destination"): REQUESTS,
                           ("fortio-server-0", "source"): REQUESTS,
                           ("fortio-server-l2-0", "destination"): REQUESTS}
    flags = {(r["labels"]["pod"], r["labels"]["reporter"], r["labels"]["response_flags"]):
             r["value"] for r in queries.result_of(data, "requests_by_response_flags")}
    assert flags[("fortio-server-l2-0", "destination", "-")] == REQUESTS
    cpu = {r["labels"]["pod"]: r["value"] for r in queries.result_of(data, "sidecar_cpu_seconds")}
    mem = {r["labels"]["pod"]: r["value"]
           for r in queries.result_of(data, "sidecar_memory_bytes")}
    print(f"sidecar CPU s {cpu}, max RSS bytes {mem}")
    assert set(cpu) == set(mem) == set(_meshed(env))
    assert all(v > 0 for v in cpu.values())
    sidecar = LabState.load(LAB).pids["fortio-server-l2-0/istio-proxy"]
    # the sidecar's main and workers, shared pages once (proportional set sizes)
    group = [sidecar, *map(int, Path(f"/proc/{sidecar}/task/{sidecar}/children").read_text()
                           .split())]
    assert len(group) == 3
    assert mem["fortio-server-l2-0"] == pytest.approx(sum(_pss_kb(p) for p in group) * 1024,
                                                      rel=0.5)
    saved = json.loads(run.journal.path.read_text())["prometheus"]
    assert saved["job"] == "envoy-stats" and saved["window"]["end_epoch_s"] == end


def test_powered_off_node_targets_are_down_the_others_up(prom):
    env, client, _ = prom
    on_node = {p for p, info in _meshed(env).items() if info.node == NODE}
    assert on_node

    def split(up: dict) -> bool:
        return (len(up) == 2 * len(_meshed(env))
                and all(v == (0.0 if pod in on_node else 1.0) for (pod, _), v in up.items()))

    with active(NodePowerOff(node=NODE), env, max_duration_s=120):
        seen = wait_until(lambda: _up(client), split, timeout_s=20, what=f"{NODE} targets down")
    print(f"\nup during the power-off: {seen}")
    wait_until(lambda: _up(client), lambda up: set(up.values()) == {1.0}, timeout_s=30,
               what="every target up again after power-on")


def test_run_in_netns_runs_in_that_netns_only(prom):
    env, client, _ = prom
    netns = env.plan.cluster_netns
    own = os.stat("/proc/thread-self/ns/net").st_ino
    inode = run_in_netns(netns, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
    assert inode == os.stat(Path("/run/netns") / netns).st_ino != own
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    with pytest.raises(ZeroDivisionError):
        run_in_netns(netns, lambda: 1 / 0)
    with pytest.raises(LabError, match="does not exist"):
        run_in_netns("ml-prom-nope", lambda: None)
    with pytest.raises(LabError, match="does not exist"):
        netns_socket("ml-prom-nope")
    with netns_connect(netns, server.monitor_ip(env.plan), server.PORT, 5.0) as sock:
        sock.sendall(b"GET /-/ready HTTP/1.0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.0 200")
    assert client.ready()
