"""EnvoyFilter (``networking.istio.io/v1alpha3``) as meshlab supports it, selected by
``workloadSelector.labels`` and ``match.context``:

- ``MERGE`` patches of listener ``socket_options`` and cluster
  ``upstream_bind_config.socket_options`` / ``upstream_connection_options.tcp_keepalive``
  (Envoy field names; ENVOY.md §8: the TCP_USER_TIMEOUT workaround);
- ``HTTP_FILTER`` patches that insert Envoy's buffer filter (``INSERT_BEFORE`` the router or
  ``INSERT_FIRST``) with ``typed_config.max_request_bytes``: the usual way to cap request size in
  Istio (:mod:`meshlab.proxy.config.http_filters`). ``match.listener.portNumber`` is then the
  Service port (outbound) or the container port (inbound), as Istio matches it.

Anything else fails as ``<file>: EnvoyFilter/<name>.<field>: <problem>``.
"""

from __future__ import annotations

from typing import Any

from meshlab.manifests.document import Document
from meshlab.manifests.istio_fields import opt, read_host, read_int, read_keepalive
from meshlab.model import EnvoyFilter, EnvoyFilterPatch
from meshlab.proxy.config.http_filters import BUFFER_FILTER, BUFFER_TYPE_URL
from meshlab.proxy.config.policy import SocketOption

_SOCKOPT = {"description": None, "level": None, "name": None, "int_value": None, "state": None}
_EF_PATCH: dict[str, Any] = {
    "applyTo": None,
    "match": {"context": None,
              "listener": {"portNumber": None, "filterChain": {"filter": {
                  "name": None, "subFilter": {"name": None}}}},
              "cluster": {"service": None, "portNumber": None}},
    "patch": {"operation": None, "value": {
        "name": None, "typed_config": {"@type": None, "max_request_bytes": None},
        "socket_options": [_SOCKOPT],
        "upstream_bind_config": {"socket_options": [_SOCKOPT]},
        "upstream_connection_options": {"tcp_keepalive": {
            "keepalive_probes": None, "keepalive_time": None, "keepalive_interval": None}}}}}

#: Field schema of the EnvoyFilter kind (notation of the manifest loader).
ENVOY_FILTER_SCHEMA: dict[str, Any] = {
    "metadata": {"name": None, "namespace": None, "labels": None, "annotations": None},
    "spec": {"workloadSelector": {"labels": None}, "configPatches": [_EF_PATCH],
             "priority": None}}
SOCKET_STATES = ("STATE_PREBIND", "STATE_BOUND", "STATE_LISTENING")
CONTEXTS = ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "ANY")
#: Capture listener port of each patch context (``virtualOutbound`` / ``virtualInbound``).
CAPTURE_LISTENERS = {"SIDECAR_OUTBOUND": 15001, "SIDECAR_INBOUND": 15006}
#: Names of the HTTP connection manager and of the router (current and legacy).
HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
ROUTER_NAMES = ("envoy.filters.http.router", "envoy.router")


def _socket_options(doc: Document, where: str, items: list[Any]) -> tuple[SocketOption, ...]:
    out = []
    for i, o in enumerate(items):
        w = f"{where}[{i}]"
        for key in ("level", "name", "int_value"):
            if key not in o:
                raise doc.fail(f"{w}.{key}", "missing required field")
        state = o.get("state", "STATE_PREBIND")
        if state not in SOCKET_STATES:
            raise doc.fail(f"{w}.state", f"expected one of {', '.join(SOCKET_STATES)}, "
                                         f"got {state!r}")
        out.append(SocketOption(read_int(doc, f"{w}.level", o["level"]),
                                    read_int(doc, f"{w}.name", o["name"]),
                                    read_int(doc, f"{w}.int_value", o["int_value"], -2**31,
                                         2**31 - 1), state))
    return tuple(out)


def _buffer_filter_patch(doc: Document, where: str, p: dict[str, Any],
                         context: str) -> EnvoyFilterPatch:
    """An ``HTTP_FILTER`` patch inserting the buffer filter (see the module docstring)."""
    match = p.get("match") or {}
    if match.get("cluster") is not None:
        raise doc.fail(f"{where}.match.cluster", "cannot match a cluster when applying to "
                                                 "HTTP_FILTER")
    listener = match.get("listener") or {}
    flt = opt(listener.get("filterChain"), "filter") or {}
    fw = f"{where}.match.listener.filterChain.filter"
    if flt.get("name") is not None and flt["name"] not in HCM_NAMES:
        raise doc.fail(f"{fw}.name", f"HTTP filters live in {HCM_NAMES[0]}, got {flt['name']!r}")
    sub = opt(flt.get("subFilter"), "name")
    if sub is not None and sub not in ROUTER_NAMES:
        raise doc.fail(f"{fw}.subFilter.name", f"meshlab inserts before {ROUTER_NAMES[0]} only, "
                                               f"got {sub!r}")
    op = opt(p.get("patch"), "operation")
    if op not in ("INSERT_BEFORE", "INSERT_FIRST"):
        raise doc.fail(f"{where}.patch.operation", "HTTP_FILTER supports INSERT_BEFORE (the "
                                                   f"router) and INSERT_FIRST, got {op!r}")
    value = opt(p.get("patch"), "value") or {}
    vw = f"{where}.patch.value"
    if value.get("name") != BUFFER_FILTER:
        raise doc.fail(f"{vw}.name", f"only {BUFFER_FILTER} is supported, "
                                     f"got {value.get('name')!r}")
    typed = value.get("typed_config") or {}
    if typed.get("@type") != BUFFER_TYPE_URL:
        raise doc.fail(f"{vw}.typed_config.@type", f"expected {BUFFER_TYPE_URL}, "
                                                   f"got {typed.get('@type')!r}")
    if typed.get("max_request_bytes") is None:
        raise doc.fail(f"{vw}.typed_config.max_request_bytes", "missing required field")
    port = listener.get("portNumber")
    return EnvoyFilterPatch(
        "HTTP_FILTER", context,
        port=None if port is None else read_int(doc, f"{where}.match.listener.portNumber",
                                                port, 1, 65535),
        max_request_bytes=read_int(doc, f"{vw}.typed_config.max_request_bytes",
                                   typed["max_request_bytes"], 1))


def _patch(doc: Document, where: str, p: dict[str, Any], namespace: str,
           domain: str) -> EnvoyFilterPatch:
    apply_to = p.get("applyTo")
    if apply_to not in ("LISTENER", "CLUSTER", "HTTP_FILTER"):
        raise doc.fail(f"{where}.applyTo", f"only LISTENER, CLUSTER and HTTP_FILTER are "
                                           f"supported, got {apply_to!r}")
    match = p.get("match") or {}
    context = match.get("context", "ANY")
    if context not in CONTEXTS:
        raise doc.fail(f"{where}.match.context", f"expected one of {', '.join(CONTEXTS)}, "
                                                 f"got {context!r}")
    if apply_to == "HTTP_FILTER":
        return _buffer_filter_patch(doc, where, p, context)
    op = opt(p.get("patch"), "operation")
    if op != "MERGE":
        raise doc.fail(f"{where}.patch.operation", f"only MERGE is supported, got {op!r}")
    value = opt(p.get("patch"), "value") or {}
    vw = f"{where}.patch.value"
    kw: dict[str, Any] = {"apply_to": apply_to, "context": context}
    own, other = ("listener", "cluster") if apply_to == "LISTENER" else ("cluster", "listener")
    if match.get(other) is not None:
        raise doc.fail(f"{where}.match.{other}", f"cannot match a {other} when applying to "
                                                 f"{apply_to}")
    sel = match.get(own) or {}
    if sel.get("portNumber") is not None:
        kw["port"] = read_int(doc, f"{where}.match.{own}.portNumber", sel["portNumber"], 1, 65535)
        if apply_to == "LISTENER" and kw["port"] not in CAPTURE_LISTENERS.values():
            raise doc.fail(f"{where}.match.listener.portNumber", "meshlab's sidecar only has "
                           "the capture listeners 15001 (outbound) and 15006 (inbound)")
    if sel.get("service") is not None:
        kw["service"] = read_host(doc, f"{where}.match.cluster.service", sel["service"], namespace,
                              domain)
    for key in ("name", "typed_config"):
        if key in value:
            raise doc.fail(f"{vw}.{key}", "is an HTTP filter field (applyTo: HTTP_FILTER)")
    if opt(match.get("listener"), "filterChain") is not None:
        raise doc.fail(f"{where}.match.listener.filterChain", "matches HTTP filters "
                                                              "(applyTo: HTTP_FILTER)")
    if apply_to == "LISTENER":
        for key in ("upstream_bind_config", "upstream_connection_options"):
            if key in value:
                raise doc.fail(f"{vw}.{key}", "is a cluster field, not a listener field")
        kw["socket_options"] = _socket_options(doc, f"{vw}.socket_options",
                                               value.get("socket_options") or [])
    else:
        if "socket_options" in value:
            raise doc.fail(f"{vw}.socket_options", "clusters have no socket_options; use "
                                                   "upstream_bind_config.socket_options")
        kw["socket_options"] = _socket_options(
            doc, f"{vw}.upstream_bind_config.socket_options",
            opt(value.get("upstream_bind_config"), "socket_options") or [])
        ka = opt(value.get("upstream_connection_options"), "tcp_keepalive")
        if ka is not None:
            kw["tcp_keepalive"] = read_keepalive(
                doc, f"{vw}.upstream_connection_options.tcp_keepalive", ka,
                ("keepalive_probes", "keepalive_time", "keepalive_interval"), durations=False)
    if not kw["socket_options"] and kw.get("tcp_keepalive") is None:
        raise doc.fail(vw, "nothing to merge (socket options or tcp_keepalive expected)")
    return EnvoyFilterPatch(**kw)


def parse_envoy_filter(doc: Document, namespace: str, domain: str) -> EnvoyFilter:
    """A validated :class:`EnvoyFilter`.

    Raises:
        ManifestError: an unsupported applyTo/context/operation/filter, a bad socket option or
            buffer limit.
    """
    patches = doc.get("spec.configPatches", kind=list)
    if not patches:
        raise doc.fail("spec.configPatches", "at least one patch is required")
    labels = doc.get("spec.workloadSelector.labels", None)
    if labels is not None and not isinstance(labels, dict):
        raise doc.fail("spec.workloadSelector.labels", "expected a mapping")
    return EnvoyFilter(doc.name, namespace,
                       {str(k): str(v) for k, v in labels.items()} if labels else None,
                       tuple(_patch(doc, f"spec.configPatches[{i}]", p, namespace, domain)
                             for i, p in enumerate(patches)), str(doc.path))
