"""Load and validate ``sidecar.json`` (docs/CONTRACTS.md §1) into frozen dataclasses.

The local "istiod" writes one file per meshed pod; the sidecar reads it once at start. Every
problem is reported as :class:`~meshlab.errors.ConfigError` naming the dotted field, e.g.
``services[0].ports[0].target_port: expected an integer 1..65535, got 'x'``.

Optional keys beyond the contract (all with Istio defaults, ENVOY.md §8):

- ``route_timeout_s``: route timeout; ``null``/0 disables it (Istio's default ``0s``).
- ``stats_flush_interval_s``: histogram interval length (Envoy/Istio default 5 s).
- ``stats_delimited_tags``: name clusters ``cluster.<name>;.`` as Istio >= 1.23 (default true).
- ``outbound_retry``: ``{"num_retries": 2, "retry_on": "connect-failure,..."}``.
- ``inbound_retry``: same shape; default none (Istio <= 1.23 sets no inbound retry policy).
- ``policies``: per-cluster / per-route traffic policy (:mod:`meshlab.proxy.config.policy`).
- ``max_request_headers_kb`` (60), ``max_headers_count`` (100), ``delayed_close_timeout_s`` (1.0):
  HCM limits (ENVOY.md §8).
- ``access_log_encoding``: ``TEXT`` (Istio's default when absent) or ``JSON``.
- ``outbound_traffic_policy``: ``ALLOW_ANY`` (default) or ``REGISTRY_ONLY`` (Istio
  ``meshConfig.outboundTrafficPolicy.mode``; unknown destinations → ``BlackHoleCluster``).
- ``tcp_stats_update_period_s``: tcp_stats ``update_period``; null (default) = only at close.
- ``dns_capture``: run the DNS proxy on 127.0.0.1:15053 (Istio ``ISTIO_META_DNS_CAPTURE``;
  default false, :mod:`meshlab.proxy.dns.server`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab.errors import ConfigError
from meshlab.proxy.config.policy import Policies, parse_policies
from meshlab.proxy.config.protocols import protocol_for_port
from meshlab.proxy.fields import (
    as_choice,
    as_int,
    as_ipv4,
    as_list,
    as_num,
    as_port,
    as_str,
    join,
    require,
)

#: Istio's default outbound retry_on (I:pilot/pkg/networking/core/route/retry/retry.go).
ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"



@dataclass(frozen=True)
class SidecarPod:
    """The pod this sidecar serves (source/destination labels of the Istio metrics)."""

    name: str
    namespace: str
    ip: str
    workload: str = "unknown"
    app: str = "unknown"
    version: str = "unknown"
    service_account: str = "default"
    node: str = ""
    cluster_id: str = "Kubernetes"

    @property
    def principal(self) -> str:
        """SPIFFE identity Istio would give the pod (no mTLS here, informational)."""
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True)
class ListenerPorts:
    """Sidecar ports (ENVOY.md §6)."""

    admin: int = 15000
    outbound: int = 15001
    inbound: int = 15006
    prometheus: int = 15090
    agent: int = 15020


@dataclass(frozen=True)
class InboundPort:
    """One port of the pod's own container(s) that inbound traffic is delivered to."""

    port: int
    name: str
    protocol: str


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service: ``port`` on the ClusterIP maps to ``target_port`` on endpoints."""

    port: int
    name: str
    protocol: str
    target_port: int


@dataclass(frozen=True)
class Endpoint:
    """One ready pod behind a Service."""

    ip: str
    pod: str = ""
    node: str = ""


@dataclass(frozen=True)
class Service:
    """A Service known to this sidecar (its own EDS view)."""

    name: str
    namespace: str
    fqdn: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class RetrySettings:
    """A route retry policy (Envoy ``RetryPolicy`` subset).

    Attributes:
        num_retries: retries after the first attempt.
        retry_on: Envoy retry conditions.
        base_interval_ms: backoff base (Envoy default 25 ms); max is 10x base.
        per_try_timeout_s: per-attempt timeout (VS ``perTryTimeout``); None = none.
        retriable_status_codes: codes ``retriable-status-codes`` retries (Istio puts the
            numeric entries of a VS ``retryOn`` here).
    """

    num_retries: int = 2
    retry_on: frozenset[str] = frozenset(ISTIO_DEFAULT_RETRY_ON.split(","))
    base_interval_ms: float = 25.0
    per_try_timeout_s: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()

    @property
    def max_interval_ms(self) -> float:
        """Envoy's default maximum backoff: 10 times the base interval."""
        return self.base_interval_ms * 10


#: Istio's sidecar default ``concurrency`` (ProxyConfig; ``proxy.istio.io/config`` sets it).
ISTIO_SIDECAR_CONCURRENCY = 2
#: Highest worker count accepted (each worker is a process).
MAX_CONCURRENCY = 64


def _concurrency(value: Any) -> int:
    """ProxyConfig ``concurrency``: 0 means one worker per CPU, as Envoy's default."""
    n = as_int(value, "concurrency")
    if n > MAX_CONCURRENCY:
        raise ConfigError(f"concurrency: expected an integer 0..{MAX_CONCURRENCY}, got {n}")
    return n or max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class SidecarConfig:
    """Everything the sidecar needs, validated (docs/CONTRACTS.md §1)."""

    pod: SidecarPod
    cluster_domain: str = "cluster.local"
    ports: ListenerPorts = field(default_factory=ListenerPorts)
    inbound: tuple[InboundPort, ...] = ()
    services: tuple[Service, ...] = ()
    connect_timeout_s: float = 10.0
    access_log_path: str | None = None
    access_log_encoding: str = "TEXT"  # Istio's default (meshConfig.accessLogEncoding)
    stats_inclusion_regexps: tuple[str, ...] = ()
    route_timeout_s: float | None = None
    stats_flush_interval_s: float = 5.0
    stats_delimited_tags: bool = True
    outbound_retry: RetrySettings | None = field(default_factory=RetrySettings)
    inbound_retry: RetrySettings | None = None
    policies: Policies = field(default_factory=Policies)
    max_request_headers_kb: int = 60  # HCM default; over it → 431 DPE (ENVOY.md §8)
    max_headers_count: int = 100  # HCM common_http_protocol_options default
    delayed_close_timeout_s: float = 1.0  # HCM default; 0 disables
    outbound_traffic_policy: str = "ALLOW_ANY"  # meshConfig.outboundTrafficPolicy.mode
    tcp_stats_update_period_s: float | None = None  # tcp_stats update_period; None = at close
    concurrency: int = ISTIO_SIDECAR_CONCURRENCY  # worker processes (Envoy --concurrency)
    dns_capture: bool = False  # ISTIO_META_DNS_CAPTURE: the agent's DNS proxy on :15053

    def inbound_port(self, port: int) -> InboundPort | None:
        """The declared inbound port ``port``, or None."""
        for p in self.inbound:
            if p.port == port:
                return p
        return None


# -- validation helpers -------------------------------------------------------------------------

def _protocol(obj: dict[str, Any], name: str, where: str) -> str:
    proto = obj.get("protocol")
    if proto is None:
        return protocol_for_port(name)
    if proto not in ("http", "grpc", "tcp"):
        raise ConfigError(f"{join(where, 'protocol')}: expected http, grpc or tcp, got {proto!r}")
    return str(proto)


def _retry(value: Any, where: str) -> RetrySettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object or null")
    num = as_int(value.get("num_retries", 2), f"{where}.num_retries")
    retry_on = as_str(value.get("retry_on", ISTIO_DEFAULT_RETRY_ON), f"{where}.retry_on")
    base = as_num(value.get("base_interval_ms", 25.0), f"{where}.base_interval_ms", minimum=1.0)
    conditions = frozenset(c.strip() for c in retry_on.split(",") if c.strip())
    return RetrySettings(num_retries=num, retry_on=conditions, base_interval_ms=base)


def parse_config(doc: Any) -> SidecarConfig:
    """Validate a decoded ``sidecar.json`` document.

    Args:
        doc: the decoded JSON object.

    Returns:
        The :class:`SidecarConfig`.

    Raises:
        ConfigError: a field is missing or invalid; the message starts with its dotted path.
    """
    if not isinstance(doc, dict):
        raise ConfigError(f"<root>: expected an object, got {type(doc).__name__}")
    p = require(doc, "pod", "")
    pod = SidecarPod(
        name=as_str(require(p, "name", "pod"), "pod.name"),
        namespace=as_str(require(p, "namespace", "pod"), "pod.namespace"),
        ip=as_ipv4(require(p, "ip", "pod"), "pod.ip"),
        **{k: as_str(p[k], f"pod.{k}", allow_empty=True)
           for k in ("workload", "app", "version", "service_account", "node", "cluster_id")
           if k in p},
    )
    ports_doc = doc.get("ports", {})
    if not isinstance(ports_doc, dict):
        raise ConfigError("ports: expected an object")
    ports = ListenerPorts(**{k: as_port(v, f"ports.{k}") for k, v in ports_doc.items()
                             if k in ListenerPorts.__dataclass_fields__})
    unknown = set(ports_doc) - set(ListenerPorts.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"ports.{min(unknown)}: unknown port role")

    inbound = []
    for i, ip_doc in enumerate(as_list(doc.get("inbound", []), "inbound")):
        w = f"inbound[{i}]"
        name = as_str(require(ip_doc, "name", w), f"{w}.name", allow_empty=True)
        inbound.append(InboundPort(port=as_port(require(ip_doc, "port", w), f"{w}.port"), name=name,
                                   protocol=_protocol(ip_doc, name, w)))

    services = []
    for i, s in enumerate(as_list(doc.get("services", []), "services")):
        w = f"services[{i}]"
        sports = []
        for j, sp in enumerate(as_list(require(s, "ports", w), f"{w}.ports")):
            pw = f"{w}.ports[{j}]"
            name = as_str(sp.get("name", "") if isinstance(sp, dict) else None, f"{pw}.name",
                        allow_empty=True)
            port = as_port(require(sp, "port", pw), f"{pw}.port")
            sports.append(ServicePort(port=port, name=name, protocol=_protocol(sp, name, pw),
                                      target_port=as_port(sp.get("target_port", port),
                                                        f"{pw}.target_port")))
        eps = []
        for j, e in enumerate(as_list(s.get("endpoints", []), f"{w}.endpoints")):
            ew = f"{w}.endpoints[{j}]"
            eps.append(Endpoint(ip=as_ipv4(require(e, "ip", ew), f"{ew}.ip"),
                                pod=str(e.get("pod", "")), node=str(e.get("node", ""))))
        services.append(Service(
            name=as_str(require(s, "name", w), f"{w}.name"),
            namespace=as_str(require(s, "namespace", w), f"{w}.namespace"),
            fqdn=as_str(require(s, "fqdn", w), f"{w}.fqdn"),
            cluster_ip=as_ipv4(require(s, "cluster_ip", w), f"{w}.cluster_ip"),
            ports=tuple(sports), endpoints=tuple(eps)))

    encoding = doc.get("access_log_encoding", "TEXT")
    if encoding not in ("JSON", "TEXT"):
        raise ConfigError(f"access_log_encoding: expected JSON or TEXT, got {encoding!r}")
    regexps = tuple(as_str(r, f"stats_inclusion_regexps[{i}]") for i, r in
                    enumerate(as_list(doc.get("stats_inclusion_regexps", []),
                                    "stats_inclusion_regexps")))
    import re

    for i, r in enumerate(regexps):
        try:
            re.compile(r)
        except re.error as exc:
            raise ConfigError(f"stats_inclusion_regexps[{i}]: invalid regex: {exc}") from None
    log_path = doc.get("access_log_path")
    if log_path is not None:
        log_path = as_str(log_path, "access_log_path")
    route_timeout = doc.get("route_timeout_s")
    if route_timeout is not None:
        route_timeout = as_num(route_timeout, "route_timeout_s") or None
    delimited = doc.get("stats_delimited_tags", True)
    if not isinstance(delimited, bool):
        raise ConfigError(f"stats_delimited_tags: expected a boolean, got {delimited!r}")
    dns_capture = doc.get("dns_capture", False)
    if not isinstance(dns_capture, bool):
        raise ConfigError(f"dns_capture: expected a boolean, got {dns_capture!r}")
    return SidecarConfig(
        pod=pod,
        cluster_domain=as_str(doc.get("cluster_domain", "cluster.local"), "cluster_domain"),
        ports=ports,
        inbound=tuple(inbound),
        services=tuple(services),
        connect_timeout_s=as_num(doc.get("connect_timeout_s", 10.0), "connect_timeout_s",
                               minimum=0.001),
        access_log_path=log_path,
        access_log_encoding=encoding,
        stats_inclusion_regexps=regexps,
        route_timeout_s=route_timeout,
        stats_flush_interval_s=as_num(doc.get("stats_flush_interval_s", 5.0),
                                    "stats_flush_interval_s", minimum=0.01),
        stats_delimited_tags=delimited,
        outbound_retry=_retry(doc.get("outbound_retry", {}), "outbound_retry"),
        inbound_retry=_retry(doc.get("inbound_retry"), "inbound_retry"),
        policies=parse_policies(doc.get("policies")),
        max_request_headers_kb=int(as_num(doc.get("max_request_headers_kb", 60),
                                        "max_request_headers_kb", minimum=1)),
        max_headers_count=int(as_num(doc.get("max_headers_count", 100), "max_headers_count",
                                   minimum=1)),
        delayed_close_timeout_s=as_num(doc.get("delayed_close_timeout_s", 1.0),
                                     "delayed_close_timeout_s"),
        outbound_traffic_policy=as_choice(doc.get("outbound_traffic_policy", "ALLOW_ANY"),
                                        "outbound_traffic_policy", ("ALLOW_ANY", "REGISTRY_ONLY")),
        tcp_stats_update_period_s=(None if doc.get("tcp_stats_update_period_s") is None else
                                   as_num(doc["tcp_stats_update_period_s"],
                                        "tcp_stats_update_period_s", minimum=0.001)),
        concurrency=_concurrency(doc.get("concurrency", ISTIO_SIDECAR_CONCURRENCY)),
        dns_capture=dns_capture,
    )


def load_config(path: str | Path) -> SidecarConfig:
    """Read and validate a ``sidecar.json`` file.

    Args:
        path: the file.

    Returns:
        The :class:`SidecarConfig`.

    Raises:
        ConfigError: the file is unreadable, not JSON, or invalid (message names the field).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read sidecar config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # found by fuzz/fuzz_sidecar_config.py
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_config(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
