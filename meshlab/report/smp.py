"""Export a run in the Service Mesh Performance (SMP) result shape: ``smp.json``.

Spec followed: github.com/service-mesh-performance/service-mesh-performance, file
``protos/service_mesh_performance.proto`` (package ``smp``), release **v0.6.1** (the file is the
same at the newest snapshot read, 6ecbce7; it last changed in 69125ea). Messages used, written
with the proto3 JSON mapping using the proto field names (which every proto3 JSON parser
accepts): timestamps as RFC 3339 UTC strings, ``int64`` as decimal strings, enums by name.

- ``PerformanceTestResult`` per load: ``start_time``, ``end_time``, ``latencies_ms``
  (``min``, ``average``, ``p50``, ``p90``, ``p99``, ``max``), ``actual_qps``, ``details_uri``,
  ``test_id``, ``mesh_config_id``, ``env_id``; p99.9, requests and errors go in ``labels``
  (the message has no field for them).
- ``PerformanceTestConfig`` per load: one ``Client`` (``load_generator``, ``protocol``,
  ``connections`` = users, ``rps``, ``endpoint_urls``) and ``duration``.
- ``ServiceMeshConfig.sidecar`` for CPU and memory: the result message only declares the
  ``CPU``/``Memory`` types, with no field holding them, while ``Sidecar`` has ``count``,
  ``cpu_mcores`` ("cpu used by all sidecars") and ``mem_mb``. They come from the journal's
  Prometheus queries ``sidecar_cpu_seconds`` (CPU seconds used during the query window, summed
  over sidecars, divided by the window) and ``sidecar_memory_bytes`` (summed; MB = 2^20 bytes).
  Without them the fields are ``null`` and ``meshlab.unavailable`` says why.

The document: ``{"smp_version", "performance_test_configs": [...], "performance_test_results":
[...], "service_mesh_config": {...}, "meshlab": {"schema", "run_id", "spec", "unavailable"}}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshlab.journal import iso

SMP_VERSION = "v0.6.1"
SPEC = ("service-mesh-performance/service-mesh-performance "
        "protos/service_mesh_performance.proto (smp, v0.6.1)")
SMP_NAME = "smp.json"
_PROTOCOLS = {"http": "PROTOCOL_HTTP", "https": "PROTOCOL_HTTP", "grpc": "PROTOCOL_GRPC",
              "tcp": "PROTOCOL_TCP", "udp": "PROTOCOL_UDP"}


def _ms(value_us: Any) -> float | None:
    return None if value_us is None else value_us / 1000


def _query_sum(prom: dict[str, Any] | None, name: str) -> tuple[float | None, str]:
    """Σ of a Prometheus query's result values, or None and the reason."""
    if prom is None:
        return None, "Prometheus was not collected for this run (no 'prometheus' section)"
    if prom.get("error"):
        return None, f"Prometheus error: {prom['error']}"
    query = next((q for q in prom.get("queries") or [] if q.get("name") == name), None)
    if query is None:
        return None, f"query {name!r} is not in the journal"
    if query.get("error"):
        return None, f"query {name!r} failed: {query['error']}"
    values = [r.get("value") for r in query.get("result") or []]
    values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not values:
        return None, f"query {name!r} returned no series"
    return float(sum(values)), ""


def _sidecar(journal: dict[str, Any], unavailable: dict[str, str]) -> dict[str, Any]:
    prom = journal.get("prometheus")
    pods = (journal.get("topology") or {}).get("pods") or []
    sidecar: dict[str, Any] = {"count": sum(1 for p in pods if p.get("meshed"))}
    cpu_s, why = _query_sum(prom, "sidecar_cpu_seconds")
    window = (prom or {}).get("window") or {}
    span_s = (window.get("end_epoch_s") or 0) - (window.get("start_epoch_s") or 0)
    if cpu_s is not None and span_s <= 0:
        cpu_s, why = None, "prometheus.window has no positive duration"
    sidecar["cpu_mcores"] = None if cpu_s is None else round(cpu_s / span_s * 1000)
    if why:
        unavailable["service_mesh_config.sidecar.cpu_mcores"] = why
    mem_b, why = _query_sum(prom, "sidecar_memory_bytes")
    sidecar["mem_mb"] = None if mem_b is None else round(mem_b / 2**20)
    if why:
        unavailable["service_mesh_config.sidecar.mem_mb"] = why
    return sidecar


def _result(journal: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    run_id = journal["run_id"]
    latency = load.get("latency_us") or {}
    latencies = {key: _ms(latency.get(src)) for key, src in
                 (("min", "min"), ("average", "mean"), ("p50", "p50"), ("p90", "p90"),
                  ("p99", "p99"), ("max", "max"))}
    labels = {"meshlab.run_id": run_id, "meshlab.load": load["name"],
              "meshlab.requests": str(load.get("requests")),
              "meshlab.errors": str(load.get("errors")),
              "meshlab.latency_p999_ms": str(_ms(latency.get("p999")))}
    start, end = load.get("start_epoch_s"), load.get("end_epoch_s")
    return {"smp_version": SMP_VERSION, "id": f"{run_id}/{load['name']}", "labels": labels,
            "start_time": None if start is None else iso(start),
            "end_time": None if end is None else iso(end),
            "latencies_ms": {k: v for k, v in latencies.items() if v is not None},
            "actual_qps": load.get("tps"), "details_uri": "report.html", "test_id": run_id,
            "mesh_config_id": f"{run_id}/mesh",
            "env_id": (journal.get("env") or {}).get("name") or ""}


def _config(journal: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    url = load.get("target_url") or ""
    client: dict[str, Any] = {
        "internal": True, "load_generator": load.get("tool") or "",
        "protocol": _PROTOCOLS.get(urlsplit(url).scheme, "PROTOCOL_INVALID"),
        "connections": load.get("users") or 0, "endpoint_urls": [url] if url else []}
    if load.get("rate_per_s"):
        client["rps"] = str(round(load["rate_per_s"]))
    duration = load.get("duration_s")
    return {"smp_version": SMP_VERSION, "id": f"{journal['run_id']}/{load['name']}",
            "name": load["name"], "labels": {"meshlab.mode": load.get("mode") or ""},
            "clients": [client], "duration": "" if duration is None else f"{duration:g}s"}


def smp_document(journal: dict[str, Any]) -> dict[str, Any]:
    """The SMP export of a validated journal (see the module docstring for the shape)."""
    unavailable: dict[str, str] = {}
    loads = journal.get("loads") or []
    if not loads:
        unavailable["performance_test_results"] = "the run journaled no load"
    return {
        "smp_version": SMP_VERSION,
        "performance_test_configs": [_config(journal, load) for load in loads],
        "performance_test_results": [_result(journal, load) for load in loads],
        "service_mesh_config": {"smp_version": SMP_VERSION, "id": f"{journal['run_id']}/mesh",
                                "labels": {"meshlab.env": (journal.get("env") or {}).get(
                                    "name") or ""},
                                "sidecar": _sidecar(journal, unavailable)},
        "meshlab": {"schema": "meshlab.smp/1", "run_id": journal["run_id"], "spec": SPEC,
                    "unavailable": unavailable},
    }


def write_smp(run_dir: Path, journal: dict[str, Any]) -> Path:
    """Write ``run_dir/smp.json`` atomically and return its path."""
    out = Path(run_dir) / SMP_NAME
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(smp_document(journal), indent=1), encoding="utf-8")
    tmp.replace(out)
    return out
