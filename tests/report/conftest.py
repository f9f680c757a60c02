"""Synthetic but realistic run journals for the report tests."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

T0 = 1_763_737_262.0  # 2025-11-21T15:01:02Z


def _series(seconds: int, tps: float, p50_us: int, fault: tuple[int, int] | None = None
            ) -> list[dict[str, Any]]:
    points = []
    for t in range(seconds):
        in_fault = fault is not None and fault[0] <= t < fault[1]
        requests = int(tps * (0.5 if in_fault else 1.0) + 7 * math.sin(t))
        errors = 3 if in_fault and t % 4 == 0 else 0
        slow = 40 if in_fault else 1
        points.append({"t_s": t, "requests": requests, "errors": errors,
                       "status_counts": {"200": requests - errors, **({"503": errors} if errors
                                                                      else {})},
                       "p50_us": p50_us + 13 * (t % 5), "p90_us": int(p50_us * 1.6),
                       "p99_us": int(p50_us * 3.1 * slow), "max_us": int(p50_us * 7 * slow)})
    return points


def _load(name: str, start_s: float, seconds: int, tps: float, p50_us: int,
          fault: tuple[int, int] | None = None) -> dict[str, Any]:
    series = _series(seconds, tps, p50_us, fault)
    requests = sum(p["requests"] for p in series)
    errors = sum(p["errors"] for p in series)
    return {"name": name, "tool": "locust", "mode": "closed-loop",
            "target_url": "http://fortio-server:8070/echo", "users": 4, "rate_per_s": tps,
            "duration_s": float(seconds), "start_epoch_s": start_s,
            "end_epoch_s": start_s + seconds, "requests": requests, "errors": errors,
            "status_counts": {"200": requests - errors, "503": errors, "0": 0},
            "tps": requests / seconds, "error_rate": errors / requests,
            "latency_us": {"min": 310, "mean": p50_us * 1.2, "p50": p50_us,
                           "p90": int(p50_us * 1.6), "p99": int(p50_us * 3.1 * (40 if fault
                                                                                 else 1)),
                           "p999": 120_345 if fault else 4_101, "max": 924_600 if fault
                           else 5_200},
            "hdr": "", "series": series}


def make_journal() -> dict[str, Any]:
    """A finished, failed run: baseline + node power-off load with one fault window."""
    cluster = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"
    return {
        "schema": "meshlab.run/1", "run_id": "20251121-150102-test_node_poweroff",
        "name": "suites/test_node_poweroff.py::test_tps_recovers",
        "status": "failed", "partial": False,
        "started_at": "2025-11-21T15:01:02Z", "ended_at": "2025-11-21T15:02:40Z",
        "duration_s": 98.0,
        "env": {"name": "local", "kernel": "6.18.44",
                "sysctls": {"net.netfilter.nf_conntrack_tcp_timeout_close_wait": "60",
                            "net.ipv4.tcp_retries2": "15",
                            "net.ipv4.tcp_keepalive_time": "7200"}},
        "topology": {
            "nodes": [{"name": "worknode5", "ip": "172.18.0.2", "pod_cidr": "10.244.1.0/24"},
                      {"name": "worknode6", "ip": "172.18.0.3", "pod_cidr": "10.244.2.0/24"}],
            "pods": [{"name": "fortio-client-0", "namespace": "mark", "node": "worknode5",
                      "ip": "10.244.1.3", "meshed": True, "workload": "fortio-client"},
                     {"name": "fortio-server-0", "namespace": "mark", "node": "worknode5",
                      "ip": "10.244.1.2", "meshed": True, "workload": "fortio-server"},
                     {"name": "fortio-server-l2-0", "namespace": "mark", "node": "worknode6",
                      "ip": "10.244.2.2", "meshed": True, "workload": "fortio-server-l2"},
                     {"name": "netshoot", "namespace": "mark", "node": "worknode6",
                      "ip": "10.244.2.9", "meshed": False, "workload": "netshoot"}],
            "services": [{"name": "fortio-server", "namespace": "mark",
                          "cluster_ip": "10.96.0.11",
                          "ports": [{"port": 8080, "name": "http"},
                                    {"port": 8070, "name": "http-proxy"}]},
                         {"name": "fortio-server-l2", "namespace": "mark",
                          "cluster_ip": "10.96.0.12", "ports": [{"port": 8080, "name": "http"}]}]},
        "activities": [
            {"name": "load:baseline", "status": "succeeded", "start": "2025-11-21T15:01:04Z",
             "end": "2025-11-21T15:01:34Z", "duration_s": 30.0, "output": None, "error": None},
            {"name": "fault:node-poweroff worknode6", "status": "succeeded",
             "start": "2025-11-21T15:01:56Z", "end": "2025-11-21T15:02:16Z", "duration_s": 20.0,
             "output": None, "error": None},
            {"name": "load:poweroff", "status": "failed", "start": "2025-11-21T15:01:36Z",
             "end": "2025-11-21T15:02:36Z", "duration_s": 60.0, "output": None,
             "error": "p99 latency over budget"},
        ],
        "loads": [_load("baseline", T0 + 2, 30, 200.0, 700),
                  _load("poweroff", T0 + 34, 60, 200.0, 720, fault=(20, 40))],
        "sidecars": {
            "fortio-server-0": {
                "response_flags": {cluster: {"-": 17_850, "UF": 45, "UF,URX": 3},
                                   "inbound|8080||": {"-": 17_898}},
                "access_log_sample": [
                    '{"response_code":200,"response_flags":"-","upstream_cluster":"' + cluster
                    + '","duration":1}',
                    '{"response_code":503,"response_flags":"UF","upstream_cluster":"' + cluster
                    + '","duration":10003}'],
            },
            "fortio-client-0": {"response_flags": {"outbound|8080||fortio-server.mark.svc."
                                                   "cluster.local": {"-": 17_898}},
                                "access_log_sample": []},
        },
        "fault_windows": [{"name": "node-poweroff worknode6", "start_epoch_s": T0 + 54,
                           "end_epoch_s": T0 + 74}],
        "verdicts": [
            {"check": "tps_at_least", "subject": "baseline", "expected": ">= 150.0 TPS",
             "observed": "199.6 TPS", "passed": True,
             "message": "throughput of load 'baseline' is 199.6 TPS, expected >= 150.0 TPS"},
            {"check": "latency_percentile_at_most", "subject": "poweroff",
             "expected": "p99 <= 10.0 ms", "observed": "89.28 ms", "passed": False,
             "message": "p99 latency of load 'poweroff' is 89.28 ms, expected <= 10.0 ms"},
        ],
    }


@pytest.fixture
def journal() -> dict[str, Any]:
    """A fresh copy of the realistic journal (tests may mutate it)."""
    return copy.deepcopy(make_journal())


def write_run(base: Path, journal: Any, run_id: str = "run-1") -> Path:
    """Write ``journal`` as ``base/<run_id>/results.json`` and return the run directory."""
    run_dir = base / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(journal), encoding="utf-8")
    return run_dir


@pytest.fixture(name="write_run")
def write_run_fixture():
    """The :func:`write_run` helper, for tests that build runs on disk."""
    return write_run
