"""The run's collectors on the real base lab (lab ``cola``): the series account for a bounded
load request by request, and a node power-off turns that node's targets into gap lines while
everything else keeps being sampled."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from meshlab.envs.local.netns_socket import netns_connect
from meshlab.experiment import Run
from meshlab.faults.node_poweroff import NodePowerOff
from meshlab.journal import RunJournal
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "cola"
L1, L2, CLIENT = "fortio-server-0", "fortio-server-l2-0", "netshoot-0"
L1_IN_RQ = "cluster.inbound|8070||;.upstream_rq_total"
L1_HCM_RQ = "http.inbound_0.0.0.0_8070;.downstream_rq_total"
L2_OUT = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"
URL = "http://fortio-server:8070/echo?size=100"
INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def env(running_lab):
    with running_lab(LAB) as lab:
        yield lab


def series(run: Run, name: str) -> list[dict[str, Any]]:
    """Complete lines of one series file of the run."""
    path = run.journal.dir / "series" / f"{name}.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(ln) for ln in text.splitlines(keepends=True) if ln.endswith("\n")]


def counter_span(run: Run, pod: str, stat: str) -> tuple[int, int]:
    """(first, latest) cumulative value of an Envoy counter from the delta-encoded lines; the
    first line holds every stat, so a counter missing there did not exist yet (0)."""
    lines = [ln for ln in series(run, "envoy_stats") if ln["target"] == pod and "gap" not in ln]
    values = [ln["counters"].get(stat, 0 if i == 0 else None) for i, ln in enumerate(lines)]
    values = [v for v in values if v is not None]
    return (values[0], values[-1]) if values else (0, 0)


def open_run(env: Any, tmp_path: Path, name: str) -> Run:
    run = Run(env, RunJournal(tmp_path, name), client=CLIENT)
    sampler = run.start_collectors(INTERVAL_S)
    assert run.start_collectors() is sampler  # idempotent
    wait_until(lambda: {ln["target"] for ln in series(run, "envoy_stats") if "gap" not in ln},
               lambda seen: seen == {L1, L2}, timeout_s=20, what="a first stats line per sidecar")
    return run


def hold_connections_until_sampled(env: Any, run: Run) -> None:
    """Open 2 idle connections from the client to L1 (no request: no counter moves) and keep
    them until the sockets series shows them: the samplers run at SCHED_IDLE, so on a busy
    machine a short load can pass between two socket reads."""
    def client_estab() -> int:
        return max((ln["states"].get("ESTAB", 0) for ln in series(run, "sockets")
                    if ln["target"] == CLIENT and "gap" not in ln), default=0)

    conns = [netns_connect(env.pod_shell(CLIENT).netns, env.pod(L1).ip, 8070, 5.0)
             for _ in range(2)]
    try:
        wait_until(client_estab, lambda n: n >= 2, timeout_s=20,
                   what="the client's connections in the sockets series")
    finally:
        for conn in conns:
            conn.close()


def test_series_account_for_every_request_of_a_load(env, tmp_path: Path):
    run = open_run(env, tmp_path, "collectors-baseline")
    load = run.load("collect", URL, users=2, rate_per_s=40, duration_s=3, max_requests=100)
    assert load.requests > 0 and load.errors == 0
    wait_until(lambda: counter_span(run, L1, L1_IN_RQ), lambda s: s[1] - s[0] >= load.requests,
               timeout_s=15, what="L1's inbound requests in the stats series")
    hold_connections_until_sampled(env, run)
    run.stop_collectors()

    for stat in (L1_IN_RQ, L1_HCM_RQ):
        first, last = counter_span(run, L1, stat)
        assert last - first == load.requests, stat
    hops: dict[tuple[str, str], int] = {}
    for line in series(run, "accesslog"):
        for _second, cluster, flags, code, n in line["counts"]:
            assert (flags, code) == ("-", 200)
            hops[(line["target"], cluster)] = hops.get((line["target"], cluster), 0) + n
    assert hops == {(L1, "inbound|8070||"): load.requests, (L1, L2_OUT): load.requests,
                    (L2, "inbound|8080||"): load.requests}
    socks = series(run, "sockets")
    estab = {pod: [ln["states"].get("ESTAB", 0) for ln in socks if ln["target"] == pod]
             for pod in (CLIENT, L1)}
    assert max(estab[CLIENT]) >= 1  # the client's connections, held open until sampled
    assert max(estab[L1]) > estab[L1][0]  # the sidecar's inbound connections
    node = [ln for ln in series(run, "conntrack") if ln["target"] == "worknode5"]
    assert node and all(ln["kind"] == "node" for ln in node)
    assert max(ln["entries"] for ln in node) > 0
    assert any("ESTABLISHED" in ln["states"] for ln in node)  # L1 → L2 crosses the node

    collectors = json.loads(run.journal.path.read_text())["collectors"]
    assert collectors["interval_s"] == INTERVAL_S and collectors["ended_epoch_s"] is not None
    assert all(collectors["samples"][s] > 0 for s in collectors["files"])
    assert collectors["gaps"] == dict.fromkeys(collectors["files"], 0)


def test_node_poweroff_gaps_only_that_nodes_targets(env, tmp_path: Path):
    run = open_run(env, tmp_path, "collectors-poweroff")
    gone = {("envoy_stats", L2), ("sockets", L2), ("conntrack", L2), ("conntrack", "worknode6")}
    alive = {("envoy_stats", L1), ("sockets", L1), ("sockets", CLIENT), ("conntrack", L1),
             ("conntrack", "worknode5")}

    def lines_since(t0: float, gap: bool) -> set[tuple[str, str]]:
        return {(name, ln["target"]) for name in ("envoy_stats", "sockets", "conntrack")
                for ln in series(run, name) if ln["t"] >= t0 and ("gap" in ln) == gap}

    with run.fault(NodePowerOff("worknode6", duration_s=120)):
        off_t = time.time()
        wait_until(lambda: lines_since(off_t, gap=True), lambda seen: gone <= seen,
                   timeout_s=20, what="gap lines for worknode6 and its pod")
        gap_t = time.time()
        wait_until(lambda: lines_since(gap_t, gap=False), lambda seen: alive <= seen,
                   timeout_s=20, what="the other targets still sampled")
        assert not lines_since(off_t, gap=True) & alive
    on_t = time.time()
    wait_until(lambda: [ln for ln in series(run, "envoy_stats")
                        if ln["target"] == L2 and ln["t"] >= on_t and "gap" not in ln],
               timeout_s=30, what="L2's stats sampled again after power-on")
    run.stop_collectors()

    l2 = [ln for ln in series(run, "envoy_stats") if ln["target"] == L2]
    last_gap = max(i for i, ln in enumerate(l2) if "gap" in ln)
    assert "cluster.inbound|8080||;.upstream_rq_total" in l2[last_gap + 1]["counters"]  # full
    collectors = json.loads(run.journal.path.read_text())["collectors"]
    assert all(collectors["gaps"][s] > 0 for s in ("envoy_stats", "sockets", "conntrack"))
    assert collectors["ended_epoch_s"] is not None
