"""What the in-test API server (:mod:`kube_fake_server`) serves and accepts, as a real one:

- **Resources**: the built-in group/versions and resources the kube env touches, and the CRD
  groups (Istio, Chaos Mesh) it may be configured without; anything else is the generic 404.
  :func:`discovery` is the ``APIResourceList`` of ``GET /apis/<group>/<version>``.
- **Validation** (:func:`validate`): the 422 ``Invalid`` field errors of the API server's
  validation for the fields the lab writes: ``metadata.name`` required and a DNS-1123
  subdomain, DNS-1123 label (Namespace, StatefulSet) or DNS-1035 label (Service); Service
  ports 1-65535 and an immutable ``spec.clusterIP``; a workload's selector matching its
  template's labels and container names that are DNS labels.
- **RBAC attributes** (:func:`request_attributes`): the verb and resource a request is
  authorized as.
- **Label selectors** (:func:`parse_selector`, :func:`selects`): equality (``=``, ``==``,
  ``!=``) and set-based (``in``, ``notin``, ``key``, ``!key``) requirements, as
  ``k8s.io/apimachinery/pkg/labels`` parses them; a malformed one is a 400.
"""

from __future__ import annotations

import re
from typing import Any

from fake_status import field_error

_ISTIO_NET = {"virtualservices": "VirtualService", "destinationrules": "DestinationRule",
              "gateways": "Gateway", "serviceentries": "ServiceEntry", "sidecars": "Sidecar"}
#: ``group/version`` → ``{plural: Kind}``; core is ``v1``.
BUILTIN: dict[str, dict[str, str]] = {
    "v1": {"namespaces": "Namespace", "nodes": "Node", "pods": "Pod", "services": "Service",
           "configmaps": "ConfigMap", "serviceaccounts": "ServiceAccount", "events": "Event",
           "secrets": "Secret", "endpoints": "Endpoints"},
    "apps/v1": {"statefulsets": "StatefulSet", "deployments": "Deployment",
                "replicasets": "ReplicaSet", "daemonsets": "DaemonSet"},
    "batch/v1": {"jobs": "Job", "cronjobs": "CronJob"},
}
#: CRD group → ``{version: {plural: Kind}}`` (a :class:`FakeKube` serves those in its
#: ``crd_groups``).
CRDS: dict[str, dict[str, dict[str, str]]] = {
    "networking.istio.io": {"v1": _ISTIO_NET, "v1beta1": _ISTIO_NET,
                            "v1alpha3": {**_ISTIO_NET, "envoyfilters": "EnvoyFilter"}},
    "telemetry.istio.io": {"v1": {"telemetries": "Telemetry"},
                           "v1alpha1": {"telemetries": "Telemetry"}},
    "security.istio.io": {"v1": {"peerauthentications": "PeerAuthentication",
                                 "authorizationpolicies": "AuthorizationPolicy"}},
    "chaos-mesh.org": {"v1alpha1": {"dnschaos": "DNSChaos", "networkchaos": "NetworkChaos",
                                    "podchaos": "PodChaos", "stresschaos": "StressChaos"}},
}

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_ALNUM_ENDS = "beginning and ending alphanumeric"
_SUBDOMAIN_RULE = f"a lowercase RFC 1123 subdomain: lower case alphanumerics, '-' or '.', " \
                  f"{_ALNUM_ENDS}"
_LABEL_RULE = f"a lowercase RFC 1123 label: lower case alphanumerics or '-', {_ALNUM_ENDS}"
_DNS1035_RULE = "a DNS-1035 label: lower case alphanumerics or '-', beginning with a letter " \
                "and ending alphanumeric"
#: name rule → (regex, max length, what the error says a name must be)
_NAME_RULES = {"subdomain": (_SUBDOMAIN, 253, _SUBDOMAIN_RULE), "label": (_LABEL, 63, _LABEL_RULE),
               "dns1035": (_DNS1035, 63, _DNS1035_RULE)}
_NAME_RULE_OF = {"Namespace": "label", "StatefulSet": "label", "Service": "dns1035"}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def served(group_version: str, crd_groups: set[str]) -> dict[str, str] | None:
    """``{plural: Kind}`` of a ``group/version`` (``v1`` for core) the server serves, else
    None (the request gets :func:`fake_status.not_served`)."""
    if group_version in BUILTIN:
        return BUILTIN[group_version]
    group, _, version = group_version.partition("/")
    return CRDS.get(group, {}).get(version) if group in crd_groups else None


def discovery(group_version: str, resources: dict[str, str]) -> dict[str, Any]:
    """The ``APIResourceList`` answering ``GET /apis/<group>/<version>``."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True,
                           "kind": kind, "verbs": ["create", "delete", "get", "list", "patch",
                                                   "update", "watch"]}
                          for plural, kind in sorted(resources.items())]}


def _must_be(rule: str, regex: str) -> str:
    return f"must be {rule} (regex used for validation is '{regex}')"


def _name_errors(kind: str, meta: dict[str, Any]) -> list[dict[str, str]]:
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        return [field_error("metadata.name", "Required",
                            detail="name or generateName is required")]
    regex, longest, rule = _NAME_RULES[_NAME_RULE_OF.get(kind, "subdomain")]
    if not isinstance(name, str) or not re.fullmatch(regex, name):
        return [field_error("metadata.name", "Invalid", name, _must_be(rule, regex))]
    if len(name) > longest:
        return [field_error("metadata.name", "Invalid", name,
                            f"must be no more than {longest} characters")]
    return []


def _port_errors(spec: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    errors = []
    if old is not None and spec.get("clusterIP") != (old.get("spec") or {}).get("clusterIP"):
        errors.append(field_error("spec.clusterIP", "Invalid", spec.get("clusterIP") or "",
                                  "field is immutable"))
    for i, port in enumerate(spec.get("ports") or []):
        for key in ("port", "targetPort"):
            value = port.get(key)
            if isinstance(value, int) and not 1 <= value <= 65535:
                errors.append(field_error(f"spec.ports[{i}].{key}", "Invalid", value,
                                          "must be between 1 and 65535, inclusive"))
    return errors


def _workload_errors(spec: dict[str, Any]) -> list[dict[str, str]]:
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    errors = []
    if not wanted.items() <= labels.items():
        errors.append(field_error("spec.template.metadata.labels", "Invalid", labels,
                                  "`selector` does not match template `labels`"))
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        errors.append(field_error("spec.template.spec.containers", "Required"))
    for i, c in enumerate(containers):
        if not re.fullmatch(_LABEL, str(c.get("name"))):
            errors.append(field_error(f"spec.template.spec.containers[{i}].name", "Invalid",
                                      c.get("name"), _must_be(_NAME_RULES["label"][2],
                                                              _LABEL)))
    return errors


def validate(kind: str, body: dict[str, Any], old: dict[str, Any] | None = None
             ) -> list[dict[str, str]]:
    """The field errors of ``body`` (a ``kind`` object; ``old``: the stored one on update),
    as Status causes (:func:`fake_status.field_error`); empty when valid."""
    errors = _name_errors(kind, body.get("metadata") or {})
    spec = body.get("spec") or {}
    if kind == "Service":
        errors += _port_errors(spec, old)
    elif kind in ("StatefulSet", "Deployment", "ReplicaSet"):
        errors += _workload_errors(spec)
    return errors


def request_attributes(method: str, path: str, query: dict[str, list[str]], upgrade: bool
                ) -> tuple[str, str, str, str, list[str]] | None:
    """RBAC's view of a request: ``(group, resource[/subresource], namespace, name, verbs)``
    (an exec/port-forward upgrade needs both ``get`` and ``create``), None for a non-resource
    path (discovery)."""
    m = re.match(r"^/api/v1/(.*)$", path) or re.match(r"^/apis/([^/]+)/[^/]+/(.+)$", path)
    if m is None:
        return None
    group, rest = ("", m[1]) if path.startswith("/api/") else (m[1], m[2])
    parts, ns = rest.strip("/").split("/"), ""
    if parts[0] == "namespaces" and len(parts) > 1:
        ns = parts[1]
        parts = parts[2:] if len(parts) > 2 else parts
    resource, name = parts[0], parts[1] if len(parts) > 1 else ""
    if len(parts) > 2:
        resource = f"{resource}/{parts[2]}"
    if upgrade:
        verbs = ["get", "create"]
    elif method in ("GET", "DELETE"):
        verbs = [("get" if method == "GET" else "delete") if name else
                 ("watch" if query.get("watch") == ["true"] else "list") if method == "GET"
                 else "deletecollection"]
    else:
        verbs = [_VERBS.get(method, method.lower())]
    return group, resource, ns, name, verbs


class SelectorError(ValueError):
    """A label selector the API server cannot parse (answered 400 BadRequest)."""


_KEY = r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_EQUALITY = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE})$")
_EXISTS = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_KEY})$")


def parse_selector(text: str) -> list[tuple[str, str, frozenset[str]]]:
    """A ``labelSelector`` query value as ``(key, op, values)`` requirements (``op``: ``=``,
    ``!=``, ``in``, ``notin``, ``exists``, ``!``); the empty selector selects everything.

    Raises:
        SelectorError: a requirement that does not parse (named in the message).
    """
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    out = []
    for term in (t.strip() for t in terms):
        if not term and len(terms) == 1:
            return []
        if m := _SET.match(term):
            values = frozenset(v.strip() for v in m["values"].split(","))
            if not all(re.fullmatch(_VALUE, v) for v in values):
                raise SelectorError(f"unable to parse requirement: invalid value in {term!r}")
            out.append((m["key"], m["op"], values))
        elif m := _EQUALITY.match(term):
            out.append((m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["value"]])))
        elif m := _EXISTS.match(term):
            out.append((m["key"], "!" if m["neg"] else "exists", frozenset()))
        else:
            raise SelectorError(f"unable to parse requirement: found {term!r}, expected: "
                                "key, !key, key=value, key!=value, key in (...) or "
                                "key notin (...)")
    return out


def selects(requirements: list[tuple[str, str, frozenset[str]]], labels: dict[str, str]
            ) -> bool:
    """Whether ``labels`` satisfy every requirement (``!=`` and ``notin`` also match an
    object without the key, as in Kubernetes)."""
    for key, op, values in requirements:
        has, value = key in labels, labels.get(key)
        if not {"=": has and value in values, "in": has and value in values,
                "!=": not has or value not in values, "notin": not has or value not in values,
                "exists": has, "!": not has}[op]:
            return False
    return True
