"""The lab's manifests as the objects the kube env applies into its namespace (no I/O).

The same ``manifests/`` the local env builds from (base folder + overlays, merged by
:func:`meshlab.manifests.loader.overlay_documents`) become cluster objects with these changes:

- every object moves into the lab's dedicated namespace (``settings.namespace``) and carries
  the ``app.kubernetes.io/managed-by: meshlab`` and ``meshlab.io/lab`` labels; ``Namespace``
  and ``LabCluster`` documents are not applied (the env creates its own labelled namespace);
- pods are placed where the local planner puts them (:meth:`Topology.pods`: required node
  affinity, else the least-loaded lab node), on the cluster nodes ``settings.cluster_node``
  maps those lab nodes to: one node → ``nodeSelector`` ``kubernetes.io/hostname``; several →
  required node affinity ``In`` those nodes plus a hostname topology spread (maxSkew 1), the
  scheduler's equivalent of the planner's spreading. The manifests' own hostname affinity names
  lab nodes and is replaced;
- Istio resources' ``.<old-namespace>.svc.`` host names follow the namespace move, and an
  object in ``istio-system`` (mesh-wide) lands in the lab namespace instead: the lab never
  writes outside its namespace;
- ``NodePort`` Services become ``ClusterIP`` (a node port opens on every node of the cluster,
  outside the blast radius) and a fixed ``clusterIP`` (an address of the local lab's range) is
  dropped;
- images are rewritten by ``settings.image_map`` (meshlab-only apps pushed to a registry);
- ``manifests/cluster/`` (objects only a cluster needs, e.g. the Telemetry that turns on access
  logs) is applied after the lab's folders, with the same changes.

Apply order: ConfigMaps/ServiceAccounts, Services, then configuration (Istio, cluster folder),
then workloads, so sidecars start with their configuration in place.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from meshlab.envs.kube.settings import MANAGED_BY, KubeSettings
from meshlab.errors import ManifestError
from meshlab.manifests.loader import overlay_documents
from meshlab.model import Topology

HOSTNAME_KEY = "kubernetes.io/hostname"
LAB_LABEL = "meshlab.io/lab"
#: Kinds the env does not apply (it creates its own namespace; LabCluster is meshlab's).
SKIPPED_KINDS = ("Namespace", "LabCluster")
WORKLOAD_KINDS = ("StatefulSet", "Deployment")
#: Apply order: configuration and Services before the pods that need them at start-up.
_ORDER = {"ConfigMap": 0, "ServiceAccount": 0, "Service": 1}


def namespace_labels(docs_labels: dict[str, str], lab: str) -> dict[str, str]:
    """Labels of the lab namespace: the manifests' namespace labels, meshlab's, injection on."""
    return {**docs_labels, **MANAGED_BY, LAB_LABEL: lab, "istio-injection": "enabled"}


def workload_nodes(topology: Topology, settings: KubeSettings) -> dict[str, list[str]]:
    """Workload name → the cluster nodes its planned pods run on (sorted)."""
    out: dict[str, set[str]] = {}
    for pod in topology.pods():
        out.setdefault(pod.workload.name, set()).add(settings.cluster_node(pod.node))
    return {name: sorted(nodes) for name, nodes in out.items()}


def _place(spec: dict[str, Any], labels: dict[str, str], nodes: list[str]) -> None:
    """Replace the pod spec's hostname affinity with the planned cluster nodes."""
    affinity = spec.get("affinity") or {}
    affinity.pop("nodeAffinity", None)
    if affinity:
        spec["affinity"] = affinity
    else:
        spec.pop("affinity", None)
    if len(nodes) == 1:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), HOSTNAME_KEY: nodes[0]}
        return
    spec.setdefault("affinity", {})["nodeAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME_KEY, "operator": "In", "values": nodes}]}]}}
    spec["topologySpreadConstraints"] = [{
        "maxSkew": 1, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": dict(labels)}}]


def _rename_hosts(value: Any, old: str, new: str) -> Any:
    """Every ``.<old>.svc.`` in strings of ``value`` as ``.<new>.svc.`` (recursively)."""
    if isinstance(value, str):
        return value.replace(f".{old}.svc.", f".{new}.svc.")
    if isinstance(value, list):
        return [_rename_hosts(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rename_hosts(v, old, new) for k, v in value.items()}
    return value


def to_cluster(body: dict[str, Any], settings: KubeSettings, lab: str,
               nodes: dict[str, list[str]]) -> dict[str, Any]:
    """One manifest document as the object to apply (see the module docstring).

    Args:
        body: the document as read (not modified).
        settings: the kube settings (namespace, node map, image map).
        lab: the lab name (label value).
        nodes: :func:`workload_nodes`.
    """
    obj = copy.deepcopy(body)
    meta = obj.setdefault("metadata", {})
    old_ns = meta.get("namespace") or "default"
    meta["namespace"] = settings.namespace
    meta["labels"] = {**(meta.get("labels") or {}), **MANAGED_BY, LAB_LABEL: lab}
    kind = obj.get("kind")
    if "istio.io/" in str(obj.get("apiVersion")):
        obj["spec"] = _rename_hosts(obj.get("spec") or {}, old_ns, settings.namespace)
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        if spec.get("type") == "NodePort":
            spec["type"] = "ClusterIP"
        spec.pop("clusterIP", None)
        for port in spec.get("ports") or []:
            port.pop("nodePort", None)
    elif kind in WORKLOAD_KINDS:
        template = obj["spec"]["template"]
        pod_spec = template["spec"]
        for c in pod_spec.get("containers") or []:
            c["image"] = settings.image_map.get(c.get("image"), c.get("image"))
        if meta["name"] in nodes:
            _place(pod_spec, (template.get("metadata") or {}).get("labels") or {},
                   nodes[meta["name"]])
    return obj


def cluster_documents(folder: Path | None) -> list[dict[str, Any]]:
    """The documents of a cluster-only folder (``manifests/cluster/``: kinds the local loader
    does not know, e.g. Telemetry), read as they are; none when the folder is None or absent.

    Raises:
        ManifestError: a file is not YAML or a document is not a mapping with a kind and name.
    """
    if folder is None or not Path(folder).is_dir():
        return []
    docs = []
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            bodies = [b for b in yaml.safe_load_all(path.read_text()) if b is not None]
        except yaml.YAMLError as exc:
            raise ManifestError(str(path), "(yaml)", f"invalid YAML: {exc}") from exc
        for body in bodies:
            if not isinstance(body, dict) or "kind" not in body or not isinstance(
                    (body.get("metadata") or {}).get("name"), str):
                raise ManifestError(str(path), "(document)", "expected a mapping with kind and "
                                                             "metadata.name")
            docs.append(body)
    return docs


def lab_objects(folders: Sequence[Path], topology: Topology, settings: KubeSettings,
                lab: str, cluster_folder: Path | None = None
                ) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The manifests of ``folders`` (then ``cluster_folder``'s, :func:`cluster_documents`) as
    ``(namespace labels, objects in apply order)``.

    Raises:
        ManifestError: see :func:`meshlab.manifests.loader.overlay_documents`.
    """
    docs = overlay_documents(list(folders))
    ns_labels: dict[str, str] = {}
    for doc in docs:
        if doc.kind == "Namespace":
            ns_labels.update((doc.body.get("metadata") or {}).get("labels") or {})
    nodes = workload_nodes(topology, settings)
    bodies = [d.body for d in docs if d.kind not in SKIPPED_KINDS]
    bodies += [b for b in cluster_documents(cluster_folder) if b["kind"] not in SKIPPED_KINDS]
    objs = [to_cluster(b, settings, lab, nodes) for b in bodies]
    objs.sort(key=lambda o: 3 if o.get("kind") in WORKLOAD_KINDS else _ORDER.get(o["kind"], 2))
    return namespace_labels(ns_labels, lab), objs
