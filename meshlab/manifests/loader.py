"""Load a manifests folder (real Kubernetes YAML) into a :class:`~meshlab.model.Topology`.

Strict on purpose: an unsupported kind, an unknown field, or a missing required field fails
fast with one line ``<file>: <Kind>/<name>.<field>: <problem>`` (:class:`ManifestError`), before
anything is built. Fields that only matter to a real cluster's image pulls and restarts
(``imagePullPolicy``, ``imagePullSecrets``, ``restartPolicy``, ``securityContext``, …) are accepted
and ignored by the local env; the kube env (#6) applies them as they are. Istio's
DestinationRule, VirtualService and EnvoyFilter are checked by
:mod:`meshlab.manifests.istio_resources` and land in ``Topology.destination_rules`` /
``virtual_services`` / ``envoy_filters``. Each document is a
:class:`~meshlab.manifests.document.Document`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshlab.errors import ManifestError
from meshlab.manifests.document import Document
from meshlab.manifests.istio_envoy_filter import parse_envoy_filter
from meshlab.manifests.istio_resources import (
    API_VERSIONS,
    ISTIO_KINDS,
    ISTIO_SCHEMAS,
    check_references,
    parse_destination_rule,
    parse_virtual_service,
)
from meshlab.manifests.quantity import cpu_millicores, memory_bytes
from meshlab.model import (
    Container,
    ContainerPort,
    LabCluster,
    Node,
    Service,
    ServicePort,
    Topology,
    Workload,
)

#: Istio's sidecar resource annotations (``sidecar.istio.io/…``, istio/api annotation.yaml).
PROXY_CPU_LIMIT = "sidecar.istio.io/proxyCPULimit"
PROXY_MEMORY_LIMIT = "sidecar.istio.io/proxyMemoryLimit"

SUPPORTED_KINDS = ("Namespace", "StatefulSet", "Deployment", "Service", "LabCluster",
                   *ISTIO_KINDS)

# Schema: key -> nested schema (dict), list item schema ([dict]), or None (scalar/opaque, kept).
_META = {"name": None, "namespace": None, "labels": None, "annotations": None}
_PORT = {"containerPort": None, "protocol": None, "name": None}
_CONTAINER = {"name": None, "image": None, "imagePullPolicy": None, "command": None, "args": None,
              "ports": [_PORT], "securityContext": None, "resources": None, "env": None}
_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": None}}
_POD_SPEC = {"containers": [_CONTAINER], "restartPolicy": None, "imagePullSecrets": None,
             "affinity": _AFFINITY, "nodeSelector": None, "serviceAccountName": None,
             "terminationGracePeriodSeconds": None}
_WORKLOAD_SPEC = {"replicas": None, "serviceName": None, "selector": None,
                  "template": {"metadata": _META, "spec": _POD_SPEC}}
_SVC_PORT = {"name": None, "protocol": None, "port": None, "targetPort": None, "nodePort": None,
             "appProtocol": None}
_SCHEMAS: dict[str, dict[str, Any]] = {
    "Namespace": {"metadata": _META},
    "StatefulSet": {"metadata": _META, "spec": _WORKLOAD_SPEC},
    "Deployment": {"metadata": _META, "spec": _WORKLOAD_SPEC},
    "Service": {"metadata": _META, "spec": {"type": None, "selector": None, "ports": [_SVC_PORT],
                                            "sessionAffinity": None, "clusterIP": None}},
    "LabCluster": {"metadata": _META, "spec": {"underlayCIDR": None, "podCIDR": None,
                                               "serviceCIDR": None, "clusterDomain": None,
                                               "nodes": [{"name": None}],
                                               "kubelet": {"crashLoopBackOffScale": None}}},
    **ISTIO_SCHEMAS,
}


def _check_fields(doc: Document, node: Any, schema: dict[str, Any], prefix: str) -> None:
    """Reject keys the schema does not know, recursively."""
    if not isinstance(node, dict):
        raise doc.fail(prefix.rstrip(".") or "(document)", "expected a mapping")
    for key, value in node.items():
        if key not in schema:
            raise doc.fail(f"{prefix}{key}", "unsupported field")
        sub = schema[key]
        if isinstance(sub, dict) and value is not None:
            _check_fields(doc, value, sub, f"{prefix}{key}.")
        elif isinstance(sub, list) and value is not None:
            if not isinstance(value, list):
                raise doc.fail(f"{prefix}{key}", "expected a list")
            for i, item in enumerate(value):
                _check_fields(doc, item, sub[0], f"{prefix}{key}[{i}].")


#: PyYAML's safe loader, libyaml's C implementation where PyYAML was built with it (the same
#: documents, ~10× faster than the pure-Python one).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_documents(folder: Path) -> list[Document]:
    """Every YAML document of ``*.yaml``/``*.yml`` files in ``folder`` (sorted by file name).

    Raises:
        ManifestError: unreadable YAML, a non-mapping document, or an unsupported kind.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(str(folder), "(folder)", "manifests folder does not exist")
    docs: list[Document] = []
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        raise ManifestError(str(folder), "(folder)", "no *.yaml manifests found")
    for path in files:
        try:
            bodies = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER))
        except UnicodeDecodeError as exc:  # found by fuzz/fuzz_manifest_loader.py
            raise ManifestError(str(path), "(file)", f"not UTF-8 text (byte {exc.start}: "
                                                     f"{exc.reason})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "(yaml)"
            raise ManifestError(str(path), where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
        for body in bodies:
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ManifestError(str(path), "(document)", "expected a mapping at the top level")
            doc = Document(path, body)
            if "kind" not in body:
                raise ManifestError(str(path), "kind", "missing required field")
            if doc.kind not in SUPPORTED_KINDS:
                raise doc.fail("kind", f"unsupported kind {doc.kind!r} "
                                       f"(supported: {', '.join(SUPPORTED_KINDS)})")
            if doc.kind in API_VERSIONS and body.get("apiVersion") not in API_VERSIONS[doc.kind]:
                raise doc.fail("apiVersion", f"expected one of {', '.join(API_VERSIONS[doc.kind])}"
                                             f", got {body.get('apiVersion')!r}")
            rest = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
            _check_fields(doc, rest, _SCHEMAS[doc.kind], "")
            doc.get("metadata.name", kind=str)
            docs.append(doc)
    return docs


def _workload(doc: Document, default_ns: str) -> Workload:
    containers = []
    for i, c in enumerate(doc.get("spec.template.spec.containers", kind=list)):
        if "image" not in c:
            raise doc.fail(f"spec.template.spec.containers[{i}].image", "missing required field")
        ports = []
        for j, p in enumerate(c.get("ports") or []):
            if "containerPort" not in p:
                raise doc.fail(f"spec.template.spec.containers[{i}].ports[{j}].containerPort",
                               "missing required field")
            ports.append(ContainerPort(name=str(p.get("name", "")), port=int(p["containerPort"])))
        cpu, memory = _limits(doc, c.get("resources"), f"spec.template.spec.containers[{i}]")
        containers.append(Container(name=str(c.get("name", f"c{i}")), image=str(c["image"]),
                                    command=tuple(map(str, c.get("command") or ())),
                                    args=tuple(map(str, c.get("args") or ())), ports=tuple(ports),
                                    cpu_limit_m=cpu, memory_limit_bytes=memory))
    annotations = {k: str(v) for k, v in (doc.get("spec.template.metadata.annotations",
                                                  {}) or {}).items()}
    proxy_cpu = _annotation_quantity(doc, annotations, PROXY_CPU_LIMIT, cpu_millicores)
    proxy_memory = _annotation_quantity(doc, annotations, PROXY_MEMORY_LIMIT, memory_bytes)
    replicas = doc.get("spec.replicas", 1, kind=int)
    if replicas < 0 or replicas > 16:
        raise doc.fail("spec.replicas", f"must be 0..16 in the lab, got {replicas}")
    return Workload(kind=doc.kind, name=doc.name, namespace=doc.get("metadata.namespace", default_ns),
                    replicas=replicas, labels=dict(doc.get("spec.template.metadata.labels", {}) or {}),
                    annotations=annotations, containers=tuple(containers),
                    node_names=_node_affinity(doc), source=str(doc.path),
                    proxy_cpu_limit_m=proxy_cpu, proxy_memory_limit_bytes=proxy_memory)


def _limits(doc: Document, resources: Any, where: str) -> tuple[int | None, int | None]:
    """``(cpu millicores, memory bytes)`` of a container's ``resources.limits`` (None: unset).

    Raises:
        ManifestError: a field that is not a mapping or not a quantity (named).
    """
    if resources is None:
        return None, None
    if not isinstance(resources, dict):
        raise doc.fail(f"{where}.resources", "expected a mapping")
    limits = resources.get("limits") or {}
    if not isinstance(limits, dict):
        raise doc.fail(f"{where}.resources.limits", "expected a mapping")
    parsed: list[int | None] = []
    for key, parse in (("cpu", cpu_millicores), ("memory", memory_bytes)):
        try:
            parsed.append(None if limits.get(key) is None else parse(limits[key]))
        except ValueError as exc:
            raise doc.fail(f"{where}.resources.limits.{key}", str(exc)) from None
    return parsed[0], parsed[1]


def _annotation_quantity(doc: Document, annotations: dict[str, str], key: str,
                         parse: Callable[[object], int]) -> int | None:
    if key not in annotations:
        return None
    try:
        return parse(annotations[key])
    except ValueError as exc:
        raise doc.fail(f"spec.template.metadata.annotations.{key}", str(exc)) from None


def _node_affinity(doc: Document) -> tuple[str, ...]:
    """Hostnames from required node affinity on ``kubernetes.io/hostname`` (operator In)."""
    field = "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    req = doc.get(field, None)
    if req is None:
        return ()
    names: list[str] = []
    for t, term in enumerate(req.get("nodeSelectorTerms") or []):
        for e, expr in enumerate(term.get("matchExpressions") or []):
            where = f"{field}.nodeSelectorTerms[{t}].matchExpressions[{e}]"
            if expr.get("key") != "kubernetes.io/hostname" or expr.get("operator") != "In":
                raise doc.fail(where, "only key kubernetes.io/hostname with operator In is supported")
            names.extend(str(v) for v in expr.get("values") or [])
    return tuple(names)


def _service(doc: Document, default_ns: str) -> Service:
    ports = []
    for i, p in enumerate(doc.get("spec.ports", kind=list)):
        if not isinstance(p, dict):
            raise doc.fail(f"spec.ports[{i}]", f"expected a mapping, got {type(p).__name__}")
        if "port" not in p:
            raise doc.fail(f"spec.ports[{i}].port", "missing required field")
        if isinstance(p["port"], bool) or not isinstance(p["port"], int):
            raise doc.fail(f"spec.ports[{i}].port", f"expected a port number, got {p['port']!r}")
        target = p.get("targetPort", p["port"])
        if isinstance(target, bool) or not isinstance(target, int):
            raise doc.fail(f"spec.ports[{i}].targetPort", "named target ports are not supported")
        ports.append(ServicePort(name=str(p.get("name", "")), port=p["port"],
                                 target_port=target, app_protocol=p.get("appProtocol")))
    selector = doc.get("spec.selector", None, kind=dict) or {}
    return Service(name=doc.name, namespace=doc.get("metadata.namespace", default_ns, kind=str),
                   selector={str(k): str(v) for k, v in selector.items()}, ports=tuple(ports),
                   cluster_ip=doc.get("spec.clusterIP", None), source=str(doc.path))


def _cluster(doc: Document) -> LabCluster:
    nodes = doc.get("spec.nodes", kind=list)
    if not nodes:
        raise doc.fail("spec.nodes", "at least one node is required")
    return LabCluster(name=doc.name, nodes=tuple(Node(str(n["name"])) for n in nodes),
                      underlay_cidr=doc.get("spec.underlayCIDR", "172.18.0.0/16"),
                      pod_cidr=doc.get("spec.podCIDR", "10.244.0.0/16"),
                      service_cidr=doc.get("spec.serviceCIDR", "10.96.0.0/16"),
                      cluster_domain=doc.get("spec.clusterDomain", "cluster.local"),
                      backoff_scale=_backoff_scale(doc), source=str(doc.path))


def _backoff_scale(doc: Document) -> float:
    """``spec.kubelet.crashLoopBackOffScale``: a number in (0, 1] (default 1: the kubelet's
    own 10 s … 300 s)."""
    scale = doc.get("spec.kubelet.crashLoopBackOffScale", 1.0, kind=(int, float))
    if isinstance(scale, bool) or not 0 < scale <= 1:
        raise doc.fail("spec.kubelet.crashLoopBackOffScale",
                       f"must be a number in (0, 1], got {scale!r}")
    return float(scale)


def overlay_documents(folders: Sequence[Path | str],
                      default_namespace: str = "default") -> list[Document]:
    """The documents of ``folders`` applied in order, as ``kubectl apply`` of each would.

    A later folder's object with the same kind, namespace and name *replaces* the earlier one
    (keeping its position); new objects are appended. So ``[base, overlays/ha-l2]`` is the book's
    lab with ``ha-l2``'s changes.

    Raises:
        ManifestError: see :func:`read_documents`; also when no folder is given.
    """
    if not folders:
        raise ManifestError("(manifests)", "(folder)", "no manifests folder given")
    merged: dict[tuple[str, str, str], Document] = {}
    for folder in folders:
        for doc in read_documents(Path(folder)):
            ns = doc.get("metadata.namespace", None, kind=str) or default_namespace
            merged[(doc.kind, "" if doc.kind in ("Namespace", "LabCluster") else ns,
                    doc.name)] = doc
    return list(merged.values())


def load_topology(folder: Path | str | Sequence[Path | str],
                  default_namespace: str = "default") -> Topology:
    """Parse a manifests folder (or a base folder plus overlays) into a validated
    :class:`Topology`.

    Args:
        folder: folder holding ``*.yaml`` manifests, one of which is a ``LabCluster``; or a
            list of folders applied in order (:func:`overlay_documents`).
        default_namespace: namespace for objects that name none.

    Returns:
        The topology, with every workload schedulable and every affinity node existing.

    Raises:
        ManifestError: the first problem found, naming file and field.
    """
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    docs = overlay_documents(folders, default_namespace)
    clusters = [d for d in docs if d.kind == "LabCluster"]
    if len(clusters) != 1:
        raise ManifestError(", ".join(map(str, folders)), "LabCluster",
                            f"exactly one LabCluster document is required, found {len(clusters)}")
    topo = Topology(cluster=_cluster(clusters[0]),
                    sources=sorted({str(d.path) for d in docs}))
    for doc in docs:
        if doc.kind == "Namespace":
            topo.namespaces[doc.name] = dict(doc.get("metadata.labels", {}) or {})
        elif doc.kind in ("StatefulSet", "Deployment"):
            topo.workloads.append(_workload(doc, default_namespace))
        elif doc.kind == "Service":
            topo.services.append(_service(doc, default_namespace))
    domain = topo.cluster.cluster_domain
    istio = [d for d in docs if d.kind in ISTIO_KINDS]
    for doc in istio:
        ns = doc.get("metadata.namespace", default_namespace)
        if doc.kind == "DestinationRule":
            topo.destination_rules.append(parse_destination_rule(doc, ns, domain))
        elif doc.kind == "VirtualService":
            topo.virtual_services.append(parse_virtual_service(doc, ns, domain))
        else:
            topo.envoy_filters.append(parse_envoy_filter(doc, ns, domain))
    check_references(istio, topo)
    node_names = {n.name for n in topo.cluster.nodes}
    for doc, wl in zip([d for d in docs if d.kind in ("StatefulSet", "Deployment")], topo.workloads):
        missing = [n for n in wl.node_names if n not in node_names]
        if missing:
            raise doc.fail("spec.template.spec.affinity", f"node {missing[0]!r} is not in the "
                           f"LabCluster (nodes: {', '.join(sorted(node_names))})")
    return topo
