"""Cluster nodes of the kube env: lab ↔ cluster node names, and the guarded NodeDriver.

Suites name nodes as the manifests' ``LabCluster`` does (``worknode6``); a cluster's nodes have
their own names (``ip-10-0-1-6``), mapped by ``settings.node_map``. :class:`NodeNames` converts
both ways, so a suite's ``PodInfo.node`` is a lab name on every env and node methods accept
either name. :class:`GuardedNodeDriver` asks :func:`~meshlab.envs.kube.guardrails.check_fault`
before every power-off: the node carries the opt-in label, and the nodes held by node faults
(this driver's and the fault ledger's active ``node-poweroff`` entries) stay within
``max_nodes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from meshlab.envs.kube.guardrails import check_fault
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.node_driver import NodeDriver


class NodeNames:
    """Lab node ↔ cluster node names.

    Args:
        settings: the kube settings (``node_map``).
        lab_nodes: the LabCluster's node names.
    """

    def __init__(self, settings: KubeSettings, lab_nodes: list[str]) -> None:
        self.settings = settings
        self.lab_nodes = list(lab_nodes)
        self._to_lab = {settings.cluster_node(n): n for n in lab_nodes}

    def __repr__(self) -> str:
        return f"NodeNames({self._to_lab!r})"

    def cluster(self, node: str) -> str:
        """The cluster node of a lab node name (a cluster name is returned as is)."""
        return self.settings.cluster_node(node) if node in self.lab_nodes else node

    def lab(self, cluster_node: str) -> str:
        """The lab node name of a cluster node (a node outside the lab keeps its name)."""
        return self._to_lab.get(cluster_node, cluster_node)


class GuardedNodeDriver:
    """A NodeDriver whose power-off is checked by the guardrails first.

    Args:
        inner: the real driver (SSH, or the dry-run printer), addressed by cluster node name.
        settings: the kube settings.
        names: lab ↔ cluster names.
        node_labels: returns every cluster node's labels (``{node: {key: value}}``).
        pods_on: returns the lab pods on a cluster node (the fault's pod blast radius).
        ledger_nodes: returns the nodes (either name) active node faults in the ledger hold.
    """

    def __init__(self, inner: NodeDriver, settings: KubeSettings, names: NodeNames,
                 node_labels: Callable[[], Mapping[str, Mapping[str, str]]],
                 pods_on: Callable[[str], list[str]],
                 ledger_nodes: Callable[[], list[str]] = list) -> None:
        self.inner, self.settings, self.names = inner, settings, names
        self.node_labels, self.pods_on, self.ledger_nodes = node_labels, pods_on, ledger_nodes
        self.held: set[str] = set()

    def __repr__(self) -> str:
        return f"GuardedNodeDriver(inner={self.inner!r}, held={sorted(self.held)})"

    def power_off(self, node: str) -> str:
        """Check the fault's blast radius, then power the node off.

        Raises:
            GuardrailError: the node is not opted in, or too many nodes would be held.
        """
        cluster = self.names.cluster(node)
        already = self.held | {self.names.cluster(n) for n in self.ledger_nodes()}
        check_fault(self.settings, "node-poweroff", [cluster], self.pods_on(cluster),
                    self.node_labels(), already_nodes=already - {cluster})
        out = self.inner.power_off(cluster)
        self.held.add(cluster)
        return out

    def power_on(self, node: str) -> str:
        """Power the node on (no guardrail: it only undoes a fault)."""
        cluster = self.names.cluster(node)
        out = self.inner.power_on(cluster)
        self.held.discard(cluster)
        return out

    def is_up(self, node: str) -> bool:
        """Whether the node answers."""
        return self.inner.is_up(self.names.cluster(node))

    def close(self) -> None:
        """Close the inner driver's connections, if it has any."""
        close: Any = getattr(self.inner, "close", None)
        if callable(close):
            close()


def ledger_nodes(env_name: str, lab: str) -> list[str]:
    """Nodes held by ``node-poweroff`` faults the ledger records as not reverted (this or
    another runner's, :mod:`meshlab.faults.ledger`)."""
    from meshlab.envs.ledger import entries

    nodes = []
    for entry in entries(env_name, lab):
        data = entry.read() or {}
        if data.get("fault") == "node-poweroff" and data.get("status") != "reverted":
            nodes.append(str((data.get("params") or {}).get("node")))
    return nodes


def describe_nodes(nodes: list[dict[str, Any]], names: NodeNames, used: set[str]
                   ) -> tuple[list[dict[str, Any]], str | None]:
    """Journal rows of the cluster nodes in ``used`` and the kernel version(s).

    Returns:
        ``([{"name" (lab name), "cluster_node", "ip" (InternalIP), "pod_cidr", "kernel"}],
        kernel)``; kernel is the one version when all nodes agree, else ``"<node>: <version>;
        …"``, None when no node reported one.
    """
    rows = []
    for n in nodes:
        if n["metadata"]["name"] not in used:
            continue
        status = n.get("status") or {}
        ips = [a["address"] for a in status.get("addresses") or []
               if a.get("type") == "InternalIP"]
        rows.append({"name": names.lab(n["metadata"]["name"]),
                     "cluster_node": n["metadata"]["name"], "ip": ips[0] if ips else None,
                     "pod_cidr": (n.get("spec") or {}).get("podCIDR"),
                     "kernel": (status.get("nodeInfo") or {}).get("kernelVersion")})
    kernels = sorted({r["kernel"] for r in rows if r["kernel"]})
    kernel = kernels[0] if len(kernels) == 1 else "; ".join(
        f"{r['name']}: {r['kernel']}" for r in rows if r["kernel"]) or None
    return rows, kernel
