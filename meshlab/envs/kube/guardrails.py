"""Guardrails of the kube env: what meshlab may touch on a real cluster, checked before it does.

A chaos tool pointed at the wrong kubeconfig context must refuse, not degrade production. Every
mutating step of the kube env asks here first:

- **namespace allow-list**: the lab's namespace must be listed in ``allowed_namespaces``, and is
  never one of the cluster's system namespaces (:data:`PROTECTED_NAMESPACES`), listed or not;
- **node opt-in label**: every node a lab pod lands on, a node fault targets, or a node command
  (``nsenter`` over SSH) runs on must carry ``node_label`` (default
  ``meshlab.io/chaos=allowed``), which an operator sets per node;
- **blast radius**: the lab runs at most ``max_pods`` pods; one fault touches at most
  ``max_nodes`` nodes and ``max_pods`` pods (a node fault touches every lab pod on the node);
- **ownership**: meshlab deletes (at ``up`` and ``down``) only a namespace it created for the
  same lab (labels ``app.kubernetes.io/managed-by=meshlab``, ``meshlab.io/lab=<lab>``);
- **dry-run** (``dry_run``) is handled by the env: nothing is sent, everything is printed.

Each refusal is a :class:`GuardrailError` whose message says what was refused, why, and what to
change to allow it (a ``kubectl`` command or a settings field).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshlab.envs.kube.settings import MANAGED_BY, KubeSettings
from meshlab.errors import ConfigError

#: Namespaces meshlab never applies to or injects into, even when allow-listed.
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "default",
                                  "istio-system", "istio-ingress", "istio-gateway"})


class GuardrailError(ConfigError):
    """A guardrail refused an action; the message says what to change to allow it."""


def _where(settings: KubeSettings) -> str:
    return f" in {settings.source}" if settings.source else " in the kube settings"


def check_namespace(settings: KubeSettings) -> None:
    """The lab's namespace is allow-listed and not a system namespace.

    Raises:
        GuardrailError: refused, with what to change.
    """
    ns = settings.namespace
    if ns in PROTECTED_NAMESPACES:
        raise GuardrailError(
            f"refused: namespace {ns!r} is a system namespace; meshlab only works in a "
            f"dedicated namespace: set namespace{_where(settings)} to e.g. 'meshlab-lab' "
            f"(and add it to allowed_namespaces)")
    if ns not in settings.allowed_namespaces:
        raise GuardrailError(
            f"refused: namespace {ns!r} is not in allowed_namespaces "
            f"{settings.allowed_namespaces}; add it to allowed_namespaces{_where(settings)} if "
            f"meshlab may create, change and delete everything in it")


def check_nodes(settings: KubeSettings, node_labels: Mapping[str, Mapping[str, str]],
                nodes: Iterable[str], what: str) -> None:
    """Every node of ``nodes`` exists and carries the opt-in label.

    Args:
        settings: the kube settings.
        node_labels: every cluster node's labels, ``{node: {key: value}}``.
        nodes: the cluster node names the action touches.
        what: the action, for the message (e.g. ``"node-poweroff"``, ``"the lab's pods"``).

    Raises:
        GuardrailError: a node is missing or not opted in (names it and the ``kubectl label``
            command that opts it in).
    """
    key, value = settings.node_label_pair
    for node in sorted(set(nodes)):
        labels = node_labels.get(node)
        if labels is None:
            raise GuardrailError(
                f"refused: {what} needs node {node!r}, which the cluster does not have "
                f"(nodes: {sorted(node_labels)}); map the lab's node to a cluster node with "
                f"node_map{_where(settings)}")
        if labels.get(key) != value:
            raise GuardrailError(
                f"refused: {what} touches node {node!r}, which does not carry the opt-in label "
                f"{settings.node_label}; if chaos is allowed on it: kubectl label node {node} "
                f"{settings.node_label}")


def check_lab_size(settings: KubeSettings, pods: int, workers: int = 0) -> None:
    """The lab's pod count, plus ``workers`` load-worker pods (Jobs) added to it, is within
    ``max_pods``.

    Raises:
        GuardrailError: too many pods (says which setting to raise).
    """
    if workers and pods + workers > settings.max_pods:
        raise GuardrailError(
            f"refused: {workers} load workers would bring the lab's {pods} pods to "
            f"{pods + workers}, more than max_pods={settings.max_pods}; raise "
            f"max_pods{_where(settings)} or use fewer processes")
    if pods > settings.max_pods:
        raise GuardrailError(
            f"refused: the lab runs {pods} pods, more than max_pods={settings.max_pods}; "
            f"raise max_pods{_where(settings)} or apply fewer replicas")


def check_fault(settings: KubeSettings, name: str, nodes: Iterable[str], pods: Iterable[str],
                node_labels: Mapping[str, Mapping[str, str]] | None = None,
                already_nodes: Iterable[str] = ()) -> None:
    """One fault's blast radius: at most ``max_nodes`` nodes (counting nodes other active
    faults already hold) and ``max_pods`` pods; its nodes opted in.

    Args:
        settings: the kube settings.
        name: the fault's name, for the message.
        nodes: cluster nodes the fault touches (a pod fault: none).
        pods: lab pods the fault touches (a node fault: every lab pod on its nodes).
        node_labels: every node's labels (needed when ``nodes`` is not empty).
        already_nodes: nodes active faults already touch.

    Raises:
        GuardrailError: over the blast radius, or a node not opted in.
    """
    nodes, pods = sorted(set(nodes)), sorted(set(pods))
    held = sorted(set(already_nodes) | set(nodes))
    if len(held) > settings.max_nodes:
        raise GuardrailError(
            f"refused: {name} would bring the nodes under faults to {len(held)} ({held}), more "
            f"than max_nodes={settings.max_nodes}; raise max_nodes{_where(settings)} to allow "
            f"a larger blast radius")
    if len(pods) > settings.max_pods:
        raise GuardrailError(
            f"refused: {name} touches {len(pods)} pods ({pods}), more than "
            f"max_pods={settings.max_pods}; raise max_pods{_where(settings)}")
    if nodes:
        check_nodes(settings, node_labels or {}, nodes, name)


def check_namespace_owner(settings: KubeSettings, labels: Mapping[str, str], lab: str) -> None:
    """The existing lab namespace (with ``labels``) was made by meshlab for lab ``lab``, so
    deleting it removes nothing else.

    Raises:
        GuardrailError: another owner, or another meshlab lab (says what to do instead).
    """
    ns = settings.namespace
    if any(labels.get(k) != v for k, v in MANAGED_BY.items()):
        key, value = next(iter(MANAGED_BY.items()))
        raise GuardrailError(
            f"refused: namespace {ns!r} exists and was not created by meshlab (no label "
            f"{key}={value}); meshlab only deletes namespaces it created: delete it yourself "
            f"(kubectl delete namespace {ns}) or set another namespace{_where(settings)}")
    owner = labels.get("meshlab.io/lab", lab)
    if owner != lab:
        raise GuardrailError(
            f"refused: namespace {ns!r} holds meshlab lab {owner!r}, not {lab!r}; another run "
            f"may be using it: bring that lab down (meshlab down --env kube --lab {owner}) or "
            f"set another namespace{_where(settings)}")
