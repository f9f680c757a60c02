"""The worker model's state sharing, without sockets: stats deltas merged by the main read as
one store that saw every update (Envoy merges thread-local stats the same way), and the shared
cells really are shared between forked processes (circuit-breaker counts, outlier ejections)."""

import multiprocessing

from meshlab.proxy.cells import (
    Cells,
    circuit_block_name,
    circuit_block_size,
    outlier_block_name,
    outlier_block_size,
)
from meshlab.proxy.config.policy import CircuitBreakers, ClusterPolicy, OutlierDetection
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.render import render_json, render_text
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.circuit import ClusterResources
from meshlab.proxy.upstream.outlier import OutlierRegistry
from meshlab.proxy.upstream.router import Cluster
from meshlab.proxy.workers.snapshot import WorkerReport, apply_deltas, merge_intervals

A, B = ("10.0.0.1", 80), ("10.0.0.2", 80)
C = "outbound|80||s.ns.svc.cluster.local"


def _stats() -> ProxyStats:
    return ProxyStats(StatsStore(StatsMatcher(include_all=True)))


def _traffic(stats: ProxyStats, seed: int) -> None:
    """Some updates of every kind a worker makes."""
    cs = stats.cluster(C)
    for i in range(20 + seed):
        cs.upstream_rq_total.inc()
        cs.upstream_rq_time.record(1.5 * (i % 7) + seed)
        cs.upstream_cx_active.inc()
        if i % 3:
            cs.upstream_cx_active.dec()
        cs.host(A if i % 2 else B).rq_total += 1
    stats.store.counter("http.inbound_0.0.0.0_8080;.downstream_rq_2xx").inc(seed)
    stats.cluster("idle|80||x")  # created, never used: /stats lists it all the same


def _merged(workers: list[ProxyStats], reports: list[WorkerReport], main: ProxyStats) -> None:
    for report in reports:
        apply_deltas(main, *report.deltas())
    for report in reports:
        merge_intervals(main, report.intervals())
    main.store.flush()


def test_merged_worker_stats_equal_one_store_that_saw_everything():
    workers = [_stats(), _stats()]
    reports = [WorkerReport(w) for w in workers]
    main, single = _stats(), _stats()
    single.store.gauge("cluster_manager.active_clusters").set(7)
    main.store.gauge("cluster_manager.active_clusters").set(7)
    for round_ in range(2):  # two report rounds: deltas, not totals, travel
        for seed, w in enumerate(workers, start=1):
            _traffic(w, seed + round_)
            _traffic(single, seed + round_)
            w.store.gauge("cluster_manager.active_clusters").set(99)  # absolute: main's own
        single.store.flush()
        _merged(workers, reports, main)
    for body in (render_text, render_json):
        assert body(main.store, None, False, "All") == body(single.store, None, False, "All")
    assert main.store.value("cluster_manager.active_clusters") == 7  # a worker's set() is not added
    for host in (A, B):
        assert main.cluster(C).host(host).items() == single.cluster(C).host(host).items()
    # reset: the main zeroes its copies, each worker its own and what it reported
    main.reset_counters()
    for report in reports:
        report.reset_counters()
    workers[0].cluster(C).upstream_rq_total.inc(5)
    for report in reports:
        apply_deltas(main, *report.deltas())
    assert main.cluster(C).upstream_rq_total.value == 5
    assert main.cluster(C).host(A).rq_total == 0
    assert main.cluster(C).upstream_cx_active.value == single.cluster(C).upstream_cx_active.value


def _child_takes_a_connection_and_ejects(cells: Cells, cluster: Cluster) -> None:
    cells.slot = 1  # the second worker
    stats = _stats()
    res = ClusterResources(cluster.policy.circuit_breakers, stats.store, "cluster.c;.",
                           cells.block(circuit_block_name(cluster.name), circuit_block_size(2)))
    res.connections.inc()
    registry = OutlierRegistry(cells=cells)
    registry.bind(stats, cells)
    for _ in range(3):
        registry.report(cluster, A, 503, stats)


def test_cells_share_circuit_counts_and_ejections_across_a_fork():
    policy = ClusterPolicy(circuit_breakers=CircuitBreakers(max_connections=1),
                           outlier_detection=OutlierDetection(consecutive_5xx=3,
                                                              base_ejection_time_s=60,
                                                              max_ejection_percent=100))
    cluster = Cluster(name=C, direction="outbound", protocol="http", listener_port=80,
                      endpoints=(A, B), policy=policy)
    cells = Cells({circuit_block_name(C): circuit_block_size(2),
                   outlier_block_name(C): outlier_block_size(2)}, shared=True, workers=2)
    stats = _stats()
    res = ClusterResources(policy.circuit_breakers, stats.store, "cluster.c;.",
                           cells.block(circuit_block_name(C), circuit_block_size(2)))
    registry = OutlierRegistry(cells=cells)
    registry.bind(stats, cells)
    assert res.connections.can_create() and registry.healthy(cluster) == (A, B)
    child = multiprocessing.get_context("fork").Process(
        target=_child_takes_a_connection_and_ejects, args=(cells, cluster))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    # the other process's connection counts here: the one allowed connection is taken
    assert res.connections.count == 1 and not res.connections.can_create()
    res.refresh()
    assert stats.store.value("cluster.c;.circuit_breakers.default.remaining_cx") == 0
    # ... and its ejection too: this process stops picking A without having seen a 5xx
    assert registry.healthy(cluster) == (B,)
    assert registry.is_ejected(C, A)
    # a private block (not in the layout) is not shared
    assert not Cells({}, shared=True).block("cb:other", circuit_block_size(2)).shared
