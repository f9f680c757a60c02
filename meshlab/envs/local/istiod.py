"""The local lab's stand-in for istiod and cluster DNS: per-pod sidecar config and hosts files.

``sidecar_config`` builds the JSON the embedded sidecar reads (docs/CONTRACTS.md §1): the pod's
own inbound ports and every Service with its ClusterIP and endpoints (what Envoy gets from
CDS/EDS). ``hosts_file`` gives each pod the Service names kube-dns would resolve
(``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.<domain>``) plus its own hostname.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from meshlab.envs.local.plan import LabPlan, PodPlan
from meshlab.errors import ManifestError

DEFAULT_CONNECT_TIMEOUT_S = 10.0  # Istio meshConfig.connectTimeout (ENVOY.md §8)


def stats_inclusion_regexps(pp: PodPlan) -> list[str]:
    """``proxyStatsMatcher.inclusionRegexps`` from the ``proxy.istio.io/config`` annotation.

    Raises:
        ManifestError: the annotation is not valid YAML or not a mapping.
    """
    wl = pp.pod.workload
    raw = wl.annotations.get("proxy.istio.io/config")
    if not raw:
        return []
    field = f"{wl.kind}/{wl.name}.spec.template.metadata.annotations.proxy.istio.io/config"
    try:
        cfg = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(wl.source, field, f"invalid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ManifestError(wl.source, field, "expected a ProxyConfig mapping")
    matcher = cfg.get("proxyStatsMatcher") or {}
    return [str(r) for r in matcher.get("inclusionRegexps") or []]


def sidecar_config(plan: LabPlan, pp: PodPlan, access_log_path: str) -> dict[str, Any]:
    """The sidecar config of one meshed pod (CONTRACTS.md §1), JSON-ready."""
    topo = plan.topology
    domain = topo.cluster.cluster_domain
    wl = pp.pod.workload
    inbound = [{"port": p.port, "name": p.name, "protocol": p.protocol}
               for c in wl.containers for p in c.ports]
    services = []
    for svc in topo.services:
        services.append({
            "name": svc.name, "namespace": svc.namespace, "fqdn": svc.fqdn(domain),
            "cluster_ip": plan.cluster_ip(svc),
            "ports": [{"port": p.port, "name": p.name, "protocol": p.protocol,
                       "target_port": p.target_port} for p in svc.ports],
            "endpoints": [{"ip": ep.ip, "pod": ep.name, "node": ep.node.name}
                          for ep in plan.endpoints(svc)],
        })
    return {
        "pod": {"name": pp.name, "namespace": pp.pod.namespace, "ip": pp.ip, "workload": wl.name,
                "app": wl.labels.get("app", wl.labels.get("app.kubernetes.io/name", wl.name)),
                "version": wl.labels.get("version", "unknown"), "service_account": "default",
                "node": pp.node.name, "cluster_id": "Kubernetes"},
        "cluster_domain": domain,
        "ports": {"admin": 15000, "outbound": 15001, "inbound": 15006, "prometheus": 15090,
                  "agent": 15020},
        "inbound": inbound,
        "services": services,
        "connect_timeout_s": DEFAULT_CONNECT_TIMEOUT_S,
        "access_log_path": access_log_path,
        "access_log_encoding": "JSON",
        "stats_inclusion_regexps": stats_inclusion_regexps(pp),
    }


def hosts_file(plan: LabPlan, pp: PodPlan) -> str:
    """``/etc/hosts`` for a pod: localhost, its own name, and every Service name."""
    domain = plan.topology.cluster.cluster_domain
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{pp.ip}\t{pp.name}.{pp.pod.workload.name}.{pp.pod.namespace}.svc.{domain} {pp.name}"]
    for svc in plan.topology.services:
        names = [svc.fqdn(domain), f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}"]
        if svc.namespace == pp.pod.namespace:
            names.append(svc.name)
        lines.append(f"{plan.cluster_ip(svc)}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(plan: LabPlan, pp: PodPlan) -> str:
    """``resolv.conf`` with the pod's search path; the nameserver is the pod's own loopback,
    where nothing listens, so an unknown name fails at once and no query leaves the lab."""
    domain = plan.topology.cluster.cluster_domain
    ns = pp.pod.namespace
    return (f"search {ns}.svc.{domain} svc.{domain} {domain}\n"
            "nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n")


def dump(cfg: dict[str, Any]) -> str:
    """Serialise a sidecar config."""
    return json.dumps(cfg, indent=1, sort_keys=False)
