"""The per-hop view: which sidecar along the request path saw which response flags and codes.

The path is rebuilt from the journal alone: the load's ``target_url`` host names the first
service (``fortio-server:8070`` → ``fortio-server``); a service's pods are the topology pods
whose ``workload`` is the service name; each sidecar's ``outbound|<port>||<fqdn>`` clusters
(``sidecars.<pod>.response_flags`` / ``response_codes`` keys, Istio's cluster naming) lead to
the next service's pods. So the layered lab reads client → L1 (inbound, then outbound to L2)
→ L2. A meshed client (a sidecar calling the first service) comes first; sidecars not reached
either way (no load, other traffic) follow, marked "off the path".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from meshlab.report.series_charts import short_cluster


def _service_pods(topology: dict[str, Any]) -> dict[str, list[str]]:
    """Service name → pod names (pods whose workload is the service's name)."""
    out: dict[str, list[str]] = {}
    for pod in topology.get("pods") or []:
        out.setdefault(pod.get("workload") or pod["name"], []).append(pod["name"])
    return out


def _clusters(sidecar: dict[str, Any]) -> list[str]:
    return sorted(set(sidecar.get("response_flags") or {}) | set(sidecar.get("response_codes")
                                                                  or {}))


def _target_service(cluster: str) -> str | None:
    """``outbound|8080||fortio-server-l2.mark.svc.cluster.local`` → ``fortio-server-l2``."""
    parts = cluster.split("|")
    return parts[3].split(".")[0] if len(parts) == 4 and parts[0] == "outbound" else None


def path_order(journal: dict[str, Any]) -> list[tuple[str, int | None]]:
    """Sidecar pods in request-path order with their depth (1 = first sidecar after the
    client, 0 = a meshed client calling it, None: off the path)."""
    sidecars = journal.get("sidecars") or {}
    pods = _service_pods(journal.get("topology") or {})
    hosts = [urlsplit(load.get("target_url") or "").hostname for load in
             journal.get("loads") or []]
    level = [p for host in hosts if host for p in pods.get(host.split(".")[0], [])
             if p in sidecars]
    if not level:
        targeted = {p for s in sidecars.values() for c in _clusters(s)
                    for p in pods.get(_target_service(c) or "", [])}
        level = [p for p in sidecars if p not in targeted]
    order: dict[str, int] = {}
    depth = 1
    while level:
        nxt = []
        for pod in dict.fromkeys(level):
            if pod in order:
                continue
            order[pod] = depth
            nxt += [p for c in _clusters(sidecars[pod])
                    for p in pods.get(_target_service(c) or "", []) if p in sidecars]
        level, depth = nxt, depth + 1
    entry = {p for p, d in order.items() if d == 1}
    callers = sorted(p for p in sidecars if p not in order and any(
        q in entry for c in _clusters(sidecars[p]) for q in pods.get(_target_service(c) or "", [])))
    rest = sorted(p for p in sidecars if p not in order and p not in callers)
    return [*((p, 0) for p in callers), *order.items(), *((p, None) for p in rest)]


def _chips(counts: dict[str, Any], bad: Any) -> list[dict[str, Any]]:
    return [{"text": key, "count": f"{n:,}", "bad": bad(key)}
            for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n]


def _code_bad(code: str) -> bool:
    return not (code.isdigit() and 200 <= int(code) < 400)


def hop_view(journal: dict[str, Any]) -> dict[str, Any] | None:
    """Client row(s) and one card per sidecar, in path order; None without ``sidecars``.

    Returns:
        ``{"clients": [{"load", "target", "requests", "codes"}], "hops": [{"pod", "role",
        "node", "ip", "rows": [{"direction", "cluster", "short", "next", "flags", "codes",
        "bad"}]}]}``; ``flags`` / ``codes`` are chips ``{"text", "count", "bad"}``.
    """
    sidecars = journal.get("sidecars")
    if sidecars is None:
        return None
    pods = {p["name"]: p for p in (journal.get("topology") or {}).get("pods") or []}
    services = _service_pods(journal.get("topology") or {})
    clients = [{"load": load["name"], "target": load.get("target_url") or "–",
                "requests": f"{load.get('requests') or 0:,}",
                "codes": _chips({("no response" if k == "0" else k): v for k, v in
                                 (load.get("status_counts") or {}).items()},
                                lambda k: k == "no response" or _code_bad(k))}
               for load in journal.get("loads") or []]
    hops = []
    for pod, depth in path_order(journal):
        sidecar = sidecars[pod] or {}
        flags, codes = sidecar.get("response_flags") or {}, sidecar.get("response_codes") or {}
        rows = []
        for cluster in sorted(_clusters(sidecar), key=lambda c: (not c.startswith("inbound"),
                                                                 c)):
            row_flags = _chips(flags.get(cluster) or {}, lambda f: f != "-")
            row_codes = _chips(codes.get(cluster) or {}, _code_bad)
            target = _target_service(cluster)
            rows.append({"direction": "inbound" if cluster.startswith("inbound") else "outbound",
                         "cluster": cluster, "short": short_cluster(cluster),
                         "next": ", ".join(services.get(target, [])) if target else "",
                         "flags": row_flags, "codes": row_codes,
                         "bad": any(c["bad"] for c in row_flags + row_codes)})
        info = pods.get(pod) or {}
        role = {None: "off the path", 0: "client sidecar"}.get(depth, f"L{depth} sidecar")
        hops.append({"pod": pod, "role": role,
                     "node": info.get("node") or "–", "ip": info.get("ip") or "–",
                     "rows": rows})
    return {"clients": clients, "hops": hops}
