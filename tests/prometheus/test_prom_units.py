"""Lab-free parts of the Prometheus integration: the sidecar's ``process_*`` metrics on 15020,
the exact counter arithmetic of the query layer, the server's config and targets, and
``collect`` recording (not raising) an unreachable server."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshlab.collectors.prometheus import QUERIES, collect, counter_delta, result_of
from meshlab.envs.local import prometheus as server
from meshlab.envs.local.netns_socket import netns_runner
from meshlab.envs.local.plan import make_plan
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS
from meshlab.envs.prometheus_api import PrometheusClient
from meshlab.manifests.loader import load_topology
from meshlab.proxy.admin.endpoints import agent_response
from meshlab.proxy.stats.process_metrics import process_values
from meshlab.proxy.stats.store import StatsMatcher, StatsStore


def _fake_proc(tmp_path, utime: int, stime: int, start: int, vsize: int, rss: int):
    (tmp_path / "self" / "fd").mkdir(parents=True)
    for fd in range(3):
        (tmp_path / "self" / "fd" / str(fd)).touch()
    rest = ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 6 + [str(start), str(vsize), str(rss)]
    (tmp_path / "self" / "stat").write_text(f"42 (python (x) y) S 1 {' '.join(rest)} 0 0\n")
    (tmp_path / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    return tmp_path


def test_process_values_follow_proc_stat_fields(tmp_path):
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    proc = _fake_proc(tmp_path, utime=3 * ticks, stime=ticks // 2, start=10 * ticks,
                      vsize=123456789, rss=1000)
    values = process_values(proc)
    assert values["process_cpu_seconds_total"] == pytest.approx(3.5)
    assert values["process_resident_memory_bytes"] == 1000 * page
    assert values["process_virtual_memory_bytes"] == 123456789
    assert values["process_start_time_seconds"] == pytest.approx(1700000010.0)
    assert values["process_open_fds"] == 3
    assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_agent_output_starts_with_this_process_metrics_then_envoy():
    store = StatsStore(StatsMatcher([".*"]))
    store.counter("cluster_manager.cluster_added").inc(3)
    reply = agent_response("GET", "/stats/prometheus", store)
    body = reply.body.decode()
    assert reply.status == 200 and body.startswith("# HELP process_cpu_seconds_total ")
    samples = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert samples["process_cpu_seconds_total"] == pytest.approx(
        usage.ru_utime + usage.ru_stime, abs=0.5)
    rss_kb = int(next(line.split()[1] for line in Path("/proc/self/status").read_text()
                      .splitlines() if line.startswith("VmRSS:")))
    assert samples["process_resident_memory_bytes"] == pytest.approx(rss_kb * 1024, rel=0.2)
    assert samples["envoy_cluster_manager_cluster_added_total"] == 3
    metrics = agent_response("GET", "/metrics", store).body.decode()
    assert "process_resident_memory_bytes " in metrics and "envoy_cluster_manager_cluster_added" in metrics


def _series(value: float, **labels: str) -> dict:
    return {"labels": {"__name__": "istio_requests_total", **labels}, "value": value, "t": 0.0}


def test_counter_delta_is_exact_per_series_then_summed():
    before = [_series(100, pod="a", reporter="source", response_flags="-"),
              _series(7, pod="a", reporter="source", response_flags="UF"),
              _series(50, pod="b", reporter="destination", response_flags="-")]
    after = [_series(400, pod="a", reporter="source", response_flags="-"),
             _series(7, pod="a", reporter="source", response_flags="UF"),
             _series(2, pod="a", reporter="source", response_flags="UH"),  # new in the window
             _series(20, pod="b", reporter="destination", response_flags="-")]  # reset
    assert counter_delta(before, after, ("pod", "reporter")) == [
        {"labels": {"pod": "a", "reporter": "source"}, "value": 302.0},
        {"labels": {"pod": "b", "reporter": "destination"}, "value": 20.0}]
    flags = counter_delta(before, after, ("response_flags",))
    assert flags == [{"labels": {"response_flags": "-"}, "value": 320.0},
                     {"labels": {"response_flags": "UF"}, "value": 0.0},
                     {"labels": {"response_flags": "UH"}, "value": 2.0}]


def test_collect_records_an_unreachable_server_instead_of_raising():
    client = PrometheusClient("http://172.18.0.1:9090", runner=netns_runner("ml-prom-missing"))
    data = collect(client, 1700000000.0, 1700000005.0, scrape_wait_s=1)
    assert data["error"] and "does not exist" in data["error"]
    assert data["window"] == {"start_epoch_s": 1700000000.0, "end_epoch_s": 1700000005.0}
    assert data["queries"] == [] and result_of(data, "requests_total") == []
    assert [q.name for q in QUERIES] == ["requests_total", "requests_by_response_flags",
                                         "sidecar_cpu_seconds", "sidecar_memory_bytes"]


def test_server_config_and_targets_cover_every_meshed_pod():
    plan = make_plan(load_topology([DEFAULT_MANIFESTS]), "promu")
    assert server.monitor_ip(plan) == "172.18.0.1"
    assert server.server_url(plan) == "http://172.18.0.1:9090"
    doc = yaml.safe_load(yaml.safe_dump(server.server_config("promu")))
    assert doc["global"]["scrape_interval"] == "5s" == doc["global"]["scrape_timeout"]
    istio = server.server_config("promu", 15)["global"]
    assert (istio["scrape_interval"], istio["scrape_timeout"]) == ("15s", "10s")
    fast = server.server_config("promu", 0.5)["global"]
    assert fast["scrape_interval"] == "500ms" == fast["scrape_timeout"]
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert set(jobs) == {"envoy-stats", "kubernetes-pods"}
    assert all(job["metrics_path"] == "/stats/prometheus" for job in jobs.values())
    meshed = {pp.name: pp for pp in plan.pods.values() if pp.pod.meshed}
    groups = server.target_groups(plan, 15090)
    assert {g["labels"]["pod"] for g in groups} == set(meshed)
    for g in groups:
        pp = meshed[g["labels"]["pod"]]
        assert g["targets"] == [f"{pp.ip}:15090"]
        assert g["labels"] == {"namespace": pp.pod.namespace, "pod": pp.name,
                               "node": pp.node.name, "app": pp.pod.labels["app"]}
