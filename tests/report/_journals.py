"""Synthetic but realistic run journals and CONTRACTS.md §5 series files for the report tests
(imported by conftest.py and by tests that need the builders themselves)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from meshlab.load import hdr

T0 = 1_763_737_262.0  # 2025-11-21T15:01:02Z
L1_OUT = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"
#: The fault window of make_journal(), epoch seconds (worknode6 powered off).
FAULT = (T0 + 54, T0 + 74)


def _second_hdr(requests: int, point: dict[str, Any]) -> str | None:
    """A per-second histogram whose percentiles match the point's (roughly)."""
    if not requests:
        return None
    hist = hdr.new_histogram()
    for value in [point["p50_us"]] * max(requests - 3, 0) + [point["p90_us"], point["p99_us"],
                                                             point["max_us"]][:requests]:
        hdr.record_us(hist, value)
    return hdr.encode(hist)


def _series(seconds: int, tps: float, p50_us: int, fault: tuple[int, int] | None = None
            ) -> list[dict[str, Any]]:
    points = []
    for t in range(seconds):
        in_fault = fault is not None and fault[0] <= t < fault[1]
        requests = int(tps * (0.5 if in_fault else 1.0) + 7 * math.sin(t))
        errors = 3 if in_fault and t % 4 == 0 else 0
        slow = 40 if in_fault else 1
        point = {"t_s": t, "requests": requests, "errors": errors,
                 "status_counts": {"200": requests - errors, **({"503": errors} if errors
                                                                else {})},
                 "p50_us": p50_us + 13 * (t % 5), "p90_us": int(p50_us * 1.6),
                 "p99_us": int(p50_us * 3.1 * slow), "max_us": int(p50_us * 7 * slow)}
        point["hdr"] = _second_hdr(requests, point)
        points.append(point)
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
            "hdr": hdr.encode(hdr.merge(p["hdr"] for p in series if p["hdr"])),
            "series": series}


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
                "response_codes": {cluster: {"200": 17_850, "503": 48},
                                   "inbound|8080||": {"200": 17_850, "503": 48}},
                "access_log_sample": [
                    '{"response_code":200,"response_flags":"-","upstream_cluster":"' + cluster
                    + '","duration":1}',
                    '{"response_code":503,"response_flags":"UF","upstream_cluster":"' + cluster
                    + '","duration":10003}'],
            },
            "fortio-server-l2-0": {"response_flags": {"inbound|8080||": {"-": 17_850}},
                                   "response_codes": {"inbound|8080||": {"200": 17_850}},
                                   "access_log_sample": []},
            "fortio-client-0": {"response_flags": {"outbound|8080||fortio-server.mark.svc."
                                                   "cluster.local": {"-": 17_898}},
                                "access_log_sample": []},
        },
        "fault_windows": [{"name": "node-poweroff worknode6", "start_epoch_s": FAULT[0],
                           "end_epoch_s": FAULT[1],
                           "params": {"node": "worknode6",
                                      "saved": {"net.ipv4.tcp_retries2": "15"}}}],
        "collectors": {"interval_s": 1.0, "started_epoch_s": T0 + 1, "ended_epoch_s": T0 + 97,
                       "files": {key: f"series/{key}.jsonl" for key in
                                 ("envoy_stats", "accesslog", "sockets", "conntrack",
                                  "containers", "dns")},
                       "samples": {"envoy_stats": 192}, "gaps": {"envoy_stats": 20}},
        "prometheus": {
            "url": "http://172.18.0.1:9090", "job": "envoy-stats",
            "window": {"start_epoch_s": T0 + 2, "end_epoch_s": T0 + 94},
            "queries": [
                {"name": "requests_total", "promql": "sum(increase(istio_requests_total[92s]))",
                 "result": [{"labels": {}, "value": 35_796.0}]},
                {"name": "requests_by_response_flags",
                 "promql": "sum by (response_flags) (increase(istio_requests_total[92s]))",
                 "result": [{"labels": {"response_flags": "-"}, "value": 35_748.0},
                            {"labels": {"response_flags": "UF"}, "value": 45.0}]},
                {"name": "sidecar_cpu_seconds",
                 "promql": "sum by (pod) (increase(process_cpu_seconds_total[92s]))",
                 "result": [{"labels": {"pod": "fortio-server-0"}, "value": 23.0},
                            {"labels": {"pod": "fortio-server-l2-0"}, "value": 13.8}]},
                {"name": "sidecar_memory_bytes",
                 "promql": "sum by (pod) (max_over_time(process_resident_memory_bytes[92s]))",
                 "result": [{"labels": {"pod": "fortio-server-0"}, "value": 60 * 2.0**20},
                            {"labels": {"pod": "fortio-server-l2-0"}, "value": 40 * 2.0**20}]},
            ],
            "error": None},
        "verdicts": [
            {"check": "tps_at_least", "subject": "baseline", "expected": ">= 150.0 TPS",
             "observed": "199.6 TPS", "passed": True,
             "message": "throughput of load 'baseline' is 199.6 TPS, expected >= 150.0 TPS"},
            {"check": "latency_percentile_at_most", "subject": "poweroff",
             "expected": "p99 <= 10.0 ms", "observed": "89.28 ms", "passed": False,
             "message": "p99 latency of load 'poweroff' is 89.28 ms, expected <= 10.0 ms"},
        ],
    }


def write_run(base: Path, journal: Any, run_id: str = "run-1", series: bool = True) -> Path:
    """Write ``journal`` as ``base/<run_id>/results.json`` (and, when it has ``collectors``
    and ``series`` is true, the §5 series files of :func:`series_lines`); return the run
    directory."""
    run_dir = base / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(journal), encoding="utf-8")
    if series and isinstance(journal, dict) and journal.get("collectors"):
        (run_dir / "series").mkdir(exist_ok=True)
        for key, lines in series_lines().items():
            text = "".join(json.dumps(line) + "\n" for line in lines)
            if key == "sockets":
                text += '{"t": 1763737360.0, "target": "fortio-se'  # killed mid-write
            (run_dir / f"series/{key}.jsonl").write_text(text, encoding="utf-8")
    return run_dir


def _delta(previous: dict[str, Any] | None, full: dict[str, Any]) -> dict[str, Any]:
    """CONTRACTS.md §5 delta encoding of one envoy_stats sample against the previous one."""
    if previous is None:
        return full
    return {kind: {k: v for k, v in full[kind].items() if previous[kind].get(k) != v}
            for kind in ("counters", "gauges", "histograms")}


def series_lines() -> dict[str, list[dict[str, Any]]]:
    """§5 lines for make_journal()'s run: one sample a second from T0+1 to T0+96. worknode6
    (L2) is powered off during FAULT: its targets write gap lines; L1 retransmits and logs UF."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in ("envoy_stats", "accesslog",
                                                            "sockets", "conntrack",
                                                            "containers", "dns")}
    previous: dict[str, dict[str, Any] | None] = {}
    retrans = 0
    for i in range(1, 97):
        t = T0 + i + 0.05
        down = FAULT[0] <= t < FAULT[1]
        retrans += 7 if down else (1 if i % 10 == 0 else 0)
        l1_tcp = f"cluster.{L1_OUT};.tcp_stats."
        samples = {
            "fortio-server-0": {
                "counters": {l1_tcp + "cx_tx_retransmitted_segments": retrans,
                             "cluster.xds-grpc.upstream_cx_total": 1},
                "gauges": {l1_tcp + "cx_tx_unacked_segments": 12 if down else 0},
                "histograms": {l1_tcp + "cx_rtt_us": {"p50": 180.0, "p90": 260.0,
                                                      "p99": 900.0 if i < 50 else 410.0,
                                                      "p999": None, "max": 1200.0}}},
            "fortio-server-l2-0": {
                "counters": {"listener.0.0.0.0_15006.tcp_stats.cx_tx_retransmitted_segments": 2},
                "gauges": {"listener.0.0.0.0_15006.tcp_stats.cx_tx_unacked_segments": 0},
                "histograms": {}}}
        for pod, full in samples.items():
            if down and pod == "fortio-server-l2-0":
                out["envoy_stats"].append({"t": t, "target": pod, "gap": "admin timeout"})
                previous[pod] = None
                continue
            out["envoy_stats"].append({"t": t, "target": pod, **_delta(previous.get(pod), full)})
            previous[pod] = full
        second = int(t) - 1  # records read at t ended in the second before
        counts = [[second, "inbound|8080||", "-", 200, 190], [second, L1_OUT, "-", 200, 190]]
        if FAULT[0] <= second < FAULT[1]:
            counts += [[second, L1_OUT, "UF", 503, 2], [second, "inbound|8080||", "-", 503, 2]]
        out["accesslog"].append({"t": t, "target": "fortio-server-0", "counts": counts})
        if down:
            out["accesslog"].append({"t": t, "target": "fortio-server-l2-0", "gap": "netns gone"})
        else:
            out["accesslog"].append({"t": t, "target": "fortio-server-l2-0",
                                     "counts": [[second, "inbound|8080||", "-", 200, 190]]})
        for pod in ("fortio-server-0", "fortio-server-l2-0", "netshoot"):
            if down and pod == "fortio-server-l2-0":
                out["sockets"].append({"t": t, "target": pod, "gap": "netns gone"})
                continue
            states = {"ESTAB": 4, "LISTEN": 3, **({"SYN-SENT": 2} if down and pod ==
                                                  "fortio-server-0" else {})}
            out["sockets"].append({"t": t, "target": pod, "states": states,
                                   "retrans_total": retrans, "unacked": 12 if down else 0,
                                   "send_q_bytes": 0, "rtt_ms_max": 0.9, "rtt_ms_avg": 0.3,
                                   "timers": {"on": 2 if down else 0, "keepalive": 1}})
        for netns, kind in (("worknode5", "node"), ("worknode6", "node"),
                            ("fortio-server-0", "pod")):
            if down and netns == "worknode6":
                out["conntrack"].append({"t": t, "target": netns, "kind": kind,
                                         "gap": "netns gone"})
                continue
            states = {"ESTABLISHED": 8, "TIME_WAIT": 3 + i % 4,
                      **({"SYN_SENT": 2} if down else {})}
            out["conntrack"].append({"t": t, "target": netns, "kind": kind,
                                     "entries": sum(states.values()), "states": states,
                                     "timeout_s": {"ESTABLISHED": {"min": 431990, "max": 432000}}})
        out["containers"].append({"t": t, "target": "fortio-server-0", "containers": {
            "istio-proxy": {"cpu_usage_us": 100_000 * i, "nr_periods": 10 * i,
                            "nr_throttled": 3 * i, "throttled_us": 20_000 * i,
                            "memory_bytes": 30 << 20, "cpu_limit_m": 100},
            "main-app": {"cpu_usage_us": 50_000 * i, "nr_periods": 0, "nr_throttled": 0,
                         "throttled_us": 0, "memory_bytes": 12 << 20, "cpu_limit_m": None}}})
        out["dns"].append({"t": t, "target": "kube-dns", "queries": {
            "fortio-server-0": 4 * i, "netshoot-0": 0}})
    return out
