"""smp.py: the Service Mesh Performance export written next to results.json."""

from __future__ import annotations

import json

import pytest
from _journals import make_journal

from meshlab.report import render_report
from meshlab.report.smp import SMP_VERSION, smp_document


def test_render_writes_smp_json_with_results_configs_and_sidecar_usage(tmp_path, write_run):
    run_dir = write_run(tmp_path, make_journal())

    render_report(run_dir)

    doc = json.loads((run_dir / "smp.json").read_text())
    assert doc["smp_version"] == SMP_VERSION and "service_mesh_performance.proto" in \
        doc["meshlab"]["spec"]
    baseline, poweroff = doc["performance_test_results"]
    assert poweroff["start_time"] == "2025-11-21T15:01:36.000Z"
    assert poweroff["end_time"] == "2025-11-21T15:02:36.000Z"
    assert poweroff["latencies_ms"] == {"min": 0.31, "average": pytest.approx(0.864),
                                        "p50": 0.72, "p90": 1.152, "p99": 89.28, "max": 924.6}
    assert poweroff["actual_qps"] == pytest.approx(9984 / 60)
    assert poweroff["labels"]["meshlab.latency_p999_ms"] == "120.345"
    assert baseline["test_id"] == "20251121-150102-test_node_poweroff"
    client = doc["performance_test_configs"][0]["clients"][0]
    assert client == {"internal": True, "load_generator": "locust", "protocol": "PROTOCOL_HTTP",
                      "connections": 4, "endpoint_urls": ["http://fortio-server:8070/echo"],
                      "rps": "200"}
    assert doc["performance_test_configs"][0]["duration"] == "30s"
    # 36.8 CPU seconds over a 92 s window = 400 mCores; 100 MiB resident
    assert doc["service_mesh_config"]["sidecar"] == {"count": 3, "cpu_mcores": 400,
                                                     "mem_mb": 100}
    assert doc["meshlab"]["unavailable"] == {}


@pytest.mark.parametrize(("change", "reason"), [
    (lambda j: j.pop("prometheus"), "Prometheus was not collected"),
    (lambda j: j["prometheus"].update(error="connection refused"),
     "Prometheus error: connection refused"),
    (lambda j: j["prometheus"]["queries"].pop(), "'sidecar_memory_bytes' is not in the journal"),
    (lambda j: j["prometheus"]["queries"][3].update(result=[]), "returned no series"),
])
def test_missing_cpu_or_memory_is_null_with_the_reason(change, reason):
    journal = make_journal()
    change(journal)

    doc = smp_document(journal)

    assert doc["service_mesh_config"]["sidecar"]["mem_mb"] is None
    assert reason in doc["meshlab"]["unavailable"]["service_mesh_config.sidecar.mem_mb"]


def test_a_run_without_loads_still_exports():
    doc = smp_document({"schema": "meshlab.run/1", "run_id": "r", "status": "error"})
    assert doc["performance_test_results"] == []
    assert "no load" in doc["meshlab"]["unavailable"]["performance_test_results"]
