"""``dns-error`` on a cluster: a Chaos Mesh ``DNSChaos`` object (``chaos-mesh.org/v1alpha1``).

Chaos Mesh's DNS chaos runs in its own CoreDNS (the ``k8s_dns_chaos`` plugin) that the pods
selected by the object are pointed at; ``action: error`` answers the names matching
``patterns`` with SERVFAIL, for every query. So only ``servfail`` at 100 % maps onto it;
``nxdomain``, ``timeout`` and a probability below 100 % are refused with the reason, as is a
cluster where the ``dnschaos`` kind is not served (Chaos Mesh not installed). A dry run prints
the object and its deletion. The object selects every pod of the lab's namespace, like the
local lab's fault (all pods share kube-dns). Revert deletes it by its ``meshlab.io/fault``
label (idempotent).
"""

from __future__ import annotations

from typing import Any

from meshlab.errors import ConfigError, Unsupported

API_VERSION = "chaos-mesh.org/v1alpha1"
KIND = "DNSChaos"
LABEL = "meshlab.io/fault"


def dnschaos_object(fault_id: str, namespace: str, patterns: list[str],
                    max_duration_s: float) -> dict[str, Any]:
    """The DNSChaos manifest of one fault (JSON-shaped, as ``kubectl get -o json`` prints)."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": f"meshlab-dns-error-{fault_id}", "namespace": namespace,
                         "labels": {LABEL: fault_id}},
            "spec": {"action": "error", "mode": "all", "patterns": list(patterns),
                     "selector": {"namespaces": [namespace]},
                     "duration": f"{int(max_duration_s)}s"}}


def check_mappable(action: str, probability_pct: float) -> None:
    """Refuse what DNSChaos cannot express.

    Raises:
        Unsupported: names the parameter and why (a ConfigError).
    """
    if action != "servfail":
        raise Unsupported(f"dns-error: action: {action!r} cannot be done on the kube env "
                          f"(Chaos Mesh DNSChaos 'error' answers SERVFAIL only)")
    if probability_pct != 100:
        raise Unsupported(f"dns-error: probability_pct: {probability_pct:g} cannot be done on "
                          f"the kube env (DNSChaos fails every matching query: use 100)")


def served(api: Any) -> bool:
    """Whether the cluster serves the ``dnschaos`` kind (always, in a dry run)."""
    if getattr(api, "dry_run", False):
        return True
    custom = getattr(api, "custom", None)
    if custom is None:
        return False
    try:
        found = custom.get_api_resources("chaos-mesh.org", "v1alpha1")
    except Exception:  # noqa: BLE001 - 404 (group not served) or unreachable: not usable
        return False
    return any(r.name == "dnschaos" for r in (getattr(found, "resources", None) or []))


def apply(env: Any, fault_id: str, patterns: list[str], action: str,
          probability_pct: float, max_duration_s: float) -> str:
    """Create the DNSChaos object in the lab's namespace.

    Raises:
        ConfigError: not expressible as DNSChaos, or the CRD is not installed.
    """
    check_mappable(action, probability_pct)
    if not served(env.api):
        raise ConfigError("dns-error: the cluster has no Chaos Mesh DNSChaos kind "
                          "(chaos-mesh.org/v1alpha1 dnschaos is not served: install Chaos "
                          "Mesh with its DNS server, or run on the local lab)")
    body = dnschaos_object(fault_id, env.namespace, patterns, max_duration_s)
    env.api.apply(env.namespace, body)
    return f"{KIND}/{body['metadata']['name']} created in {env.namespace}"


def delete(env: Any, fault_id: str) -> str:
    """Delete the fault's DNSChaos object (idempotent)."""
    names = env.api.delete_labelled(env.namespace, API_VERSION, KIND, f"{LABEL}={fault_id}")
    return f"{KIND} deleted: {', '.join(names) or 'none'}"
