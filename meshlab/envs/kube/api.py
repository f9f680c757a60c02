"""One small facade over the official ``kubernetes`` client: every call the kube env makes.

Objects go in and come out as plain JSON-shaped dicts (camelCase keys, as ``kubectl get -o json``
prints them), so the env, the dry-run facade (:mod:`meshlab.envs.kube.dry_run`) and the tests
share one shape. Client exceptions are translated here, at the boundary: an HTTP error becomes
an :class:`ApiError` (a :class:`~meshlab.errors.LabError` with the HTTP status) naming the call,
the status and the API server's message; a body the client's models reject becomes a
:class:`~meshlab.errors.ConfigError`.

Exec and port-forward are :class:`~meshlab.envs.kube.streams.KubeStreams`. One the API server
refuses is answered before the WebSocket upgrade, with an HTTP error and a ``Status`` body, and
raised like any other refused call.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pydantic
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from websocket import WebSocketBadStatusException, WebSocketException

from meshlab.envs.kube.facade import TYPED_KINDS, custom_plural
from meshlab.envs.kube.streams import KubeStreams
from meshlab.errors import ConfigError, LabError
from meshlab.polling import PollTimeout, wait_until

#: The patch type of the pod subresource patches (containers merged by name, as ``kubectl``
#: sends them); the client would default to JSON Patch, which a dict body is not.
STRATEGIC_MERGE = "application/strategic-merge-patch+json"

log = logging.getLogger(__name__)

def api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    """An ApiClient from ``kubeconfig`` (None: ``$KUBECONFIG`` / ``~/.kube/config``, else the
    in-cluster service account, as in the nightly CronJob).

    Raises:
        ConfigError: no usable kubeconfig / context (the message names the setting).
    """
    path = os.path.expanduser(kubeconfig) if kubeconfig else None
    default = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(":")[0])
    if path or Path(default).is_file() or context:
        try:
            return config.new_client_from_config(config_file=path, context=context)
        except (config.ConfigException, OSError, ValueError) as exc:
            raise ConfigError(f"kubeconfig: cannot load {path or default} (context "
                              f"{context or 'current'}): {exc}; set kubeconfig / context in the "
                              "kube settings") from exc
    try:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(f"kubeconfig: none at {default or '~/.kube/config'} and not running in "
                          f"a cluster ({exc}); set kubeconfig in the kube settings or "
                          "$KUBECONFIG") from exc
    return client.ApiClient(cfg)


class ApiError(LabError):
    """The API server refused a call (:attr:`status`: its HTTP status)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _status_message(body: Any, reason: str) -> str:
    """The ``message`` of a ``Status`` body; a body that is not one as it is; else ``reason``."""
    try:
        return str(json.loads(body or "{}").get("message") or reason)
    except (ValueError, AttributeError):
        return str(body or reason)


def _http_error(exc: ApiException) -> tuple[int, str, str]:
    """``(status, reason, message)`` of a client error. An exec or port-forward refused before
    the WebSocket upgrade reaches the client as status 0 raised while handling the handshake's
    ``WebSocketBadStatusException``, which holds the real status and ``Status`` body."""
    refused = exc.__context__
    if exc.status == 0 and isinstance(refused, WebSocketBadStatusException):
        body = refused.resp_body.decode(errors="replace") if refused.resp_body else None
        reason = str(refused.status_message or "")
        return refused.status_code, reason, _status_message(body, reason)
    return int(exc.status or 0), str(exc.reason), _status_message(exc.body, str(exc.reason))


class KubeApi(KubeStreams):
    """The facade over a real API server.

    Args:
        api: a configured ``kubernetes.client.ApiClient`` (see :func:`api_client`).
        poll_s: seconds between polls (:meth:`apply` waiting for a terminating object).
        wait_s: how long :meth:`apply` waits for an object being deleted to be gone.
    """

    dry_run = False

    def __init__(self, api: client.ApiClient, poll_s: float = 1.0, wait_s: float = 120.0
                 ) -> None:
        self.api, self.poll_s, self.wait_s = api, poll_s, wait_s
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.server = str(api.configuration.host)

    def __repr__(self) -> str:
        return f"KubeApi(server={self.server!r})"

    def announce(self, line: str) -> None:
        """A step the env takes without an API call (logged; the dry run prints it)."""
        log.info("%s", line)

    def _call(self, what: str, fn: Callable[[], Any], missing_ok: bool = False) -> Any:
        """Run ``fn``, translating client errors (:class:`ApiError` for a refusal); a 404 gives
        None when ``missing_ok``."""
        try:
            return fn()
        except ApiException as exc:
            status, reason, message = _http_error(exc)
            if missing_ok and status == 404:
                return None
            raise ApiError(f"{what}: HTTP {status} {reason}: {message} (API server "
                           f"{self.server})", status) from exc
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:])  # [0]: the argument's index
            raise ConfigError(f"{what}: the object does not match the Kubernetes schema: "
                              f"{where}: {first['msg']}") from exc
        except (urllib3.exceptions.HTTPError, OSError, WebSocketException) as exc:
            raise LabError(f"{what}: cannot reach the API server {self.server}: {exc}") from exc

    def _json(self, what: str, fn: Callable[[], Any], missing_ok: bool = False) -> Any:
        """Call with ``_preload_content=False`` and decode the JSON body."""
        resp = self._call(what, fn, missing_ok)
        return None if resp is None else json.loads(resp.data or b"null")

    # namespaces ------------------------------------------------------------------------
    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """The namespace object, or None when it does not exist."""
        return self._json(f"read namespace {name}", lambda: self.core.read_namespace(
            name, _preload_content=False), missing_ok=True)

    def create_namespace(self, name: str, labels: dict[str, str]) -> None:
        """Create namespace ``name`` with ``labels``."""
        body: Any = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": name, "labels": dict(labels)}}
        self._call(f"create namespace {name}", lambda: self.core.create_namespace(
            body, _preload_content=False))

    def delete_namespace(self, name: str) -> bool:
        """Delete namespace ``name`` (foreground); False when it did not exist. One already
        terminating counts as deleted (the API server answers a second delete with 409
        Conflict while it removes the content)."""
        try:
            return self._call(f"delete namespace {name}", lambda: self.core.delete_namespace(
                name, propagation_policy="Foreground", _preload_content=False),
                missing_ok=True) is not None
        except ApiError as exc:
            if exc.status != 409:
                raise
            return True

    def patch_namespace_labels(self, name: str, labels: dict[str, str | None]) -> None:
        """Set (None: remove) labels of namespace ``name``."""
        body = {"metadata": {"labels": dict(labels)}}
        self._call(f"label namespace {name}", lambda: self.core.patch_namespace(
            name, body, _preload_content=False))

    # objects -----------------------------------------------------------------------------
    def delete_labelled(self, namespace: str, api_version: str, kind: str,
                        selector: str) -> list[str]:
        """Delete (foreground) every ``kind`` object of ``namespace`` matching the label
        ``selector``; a kind the cluster does not serve (no CRD: 404) has none.

        Returns:
            The names deleted.
        """
        what = f"delete {kind} -l {selector} in {namespace}"
        typed = TYPED_KINDS.get((api_version, kind))
        if typed is not None:
            api, verb = getattr(client, typed[0])(self.api), typed[1]
            listed = partial(getattr(api, f"list_{verb}"), namespace)
            delete = partial(getattr(api, f"delete_{verb}"), namespace=namespace,
                             propagation_policy="Foreground")
        else:
            group, _, ver = api_version.partition("/")
            where = (group, ver, namespace, custom_plural(kind))
            listed = partial(self.custom.list_namespaced_custom_object, *where)
            delete = partial(self.custom.delete_namespaced_custom_object, *where)
        found = self._json(what, lambda: listed(label_selector=selector, _preload_content=False),
                           missing_ok=True)
        names = [o["metadata"]["name"] for o in (found or {}).get("items", [])]
        for name in names:
            self._call(what, partial(delete, name, _preload_content=False), missing_ok=True)
        return names

    def apply(self, namespace: str, body: dict[str, Any]) -> str:
        """Create ``body`` in ``namespace``, or replace the existing object of that name; one
        still being deleted (a ``deletionTimestamp``: the API server answers the create with
        409 ``object is being deleted``) is waited for, up to ``wait_s``, then created again.

        Returns:
            ``"created"`` or ``"replaced"``.

        Raises:
            ConfigError: an unsupported kind, or a body the client's models reject.
            LabError: the API server refused (e.g. 422 Invalid, 403 Forbidden in a terminating
                namespace), or the old object was not gone in time.
        """
        kind, version = str(body.get("kind")), str(body.get("apiVersion"))
        name = str((body.get("metadata") or {}).get("name") or "")
        what = f"apply {kind}/{name} in {namespace}"
        create, read, replace = self._verbs(version, kind, namespace, name)
        try:
            self._call(what, lambda: create(body))
            return "created"
        except ApiError as exc:  # a 409 means it exists: replace it
            if exc.status != 409:
                raise
        existing = self._json(what, read, missing_ok=True)
        if existing is None or existing["metadata"].get("deletionTimestamp"):
            self._wait_gone(what, read)
            self._call(what, lambda: create(body))
            return "created"
        merged = json.loads(json.dumps(body))
        merged["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
        if kind == "Service":  # spec.clusterIP(s) are immutable: keep the allocated ones
            for key in ("clusterIP", "clusterIPs"):
                if key in existing.get("spec", {}):
                    merged["spec"][key] = existing["spec"][key]
        self._call(what, lambda: replace(merged))
        return "replaced"

    def _wait_gone(self, what: str, read: Callable[[], Any]) -> None:
        try:
            wait_until(lambda: self._json(what, read, missing_ok=True), lambda obj: obj is None,
                       timeout_s=self.wait_s, every_s=self.poll_s, what=f"{what}: old one gone")
        except PollTimeout:
            raise ApiError(f"{what}: the previous object of that name is still being deleted "
                           f"{self.wait_s:g} s later (finalizers?)", 409) from None

    def _verbs(self, version: str, kind: str, namespace: str, name: str) -> tuple[
            Callable[[dict[str, Any]], Any], Callable[[], Any], Callable[[dict[str, Any]], Any]]:
        """The client calls ``(create(body), read(), replace(body))`` for one object.

        Raises:
            ConfigError: neither a typed kind (:data:`TYPED_KINDS`) nor a custom resource.
        """
        typed = TYPED_KINDS.get((version, kind))
        if typed is not None:
            api, verb = getattr(client, typed[0])(self.api), typed[1]
            return (lambda body: getattr(api, f"create_{verb}")(namespace, body,
                                                                _preload_content=False),
                    lambda: getattr(api, f"read_{verb}")(name, namespace, _preload_content=False),
                    lambda body: getattr(api, f"replace_{verb}")(name, namespace, body,
                                                                 _preload_content=False))
        group, _, ver = version.partition("/")
        if not ver or "." not in group:
            raise ConfigError(f"apply {kind}/{name}: kind {kind} ({version}) is not supported by "
                              f"the kube env (typed kinds: {sorted(k for _, k in TYPED_KINDS)}, "
                              "or custom resources)")
        plural, custom = custom_plural(kind), self.custom
        return (lambda body: custom.create_namespaced_custom_object(
                    group, ver, namespace, plural, body, _preload_content=False),
                lambda: custom.get_namespaced_custom_object(
                    group, ver, namespace, plural, name, _preload_content=False),
                lambda body: custom.replace_namespaced_custom_object(
                    group, ver, namespace, plural, name, body, _preload_content=False))

    # reads -------------------------------------------------------------------------------
    def list_nodes(self) -> list[dict[str, Any]]:
        """Every node of the cluster."""
        return self._json("list nodes", lambda: self.core.list_node(
            _preload_content=False))["items"]

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        """Every pod of ``namespace``."""
        return self._json(f"list pods in {namespace}", lambda: self.core.list_namespaced_pod(
            namespace, _preload_content=False))["items"]

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """One pod."""
        return self._json(f"read pod {namespace}/{name}", lambda: self.core.read_namespaced_pod(
            name, namespace, _preload_content=False))

    def delete_pod(self, namespace: str, name: str, grace_s: float) -> None:
        """Delete one pod with a grace period in whole seconds (``kubectl delete pod
        --grace-period``; 0 with no wait, as ``--force``); its controller recreates it."""
        self._call(f"delete pod {namespace}/{name}", lambda: self.core.delete_namespaced_pod(
            name, namespace, grace_period_seconds=round(grace_s), _preload_content=False))

    def resize_pod(self, namespace: str, name: str, container: str,
                   limits: dict[str, str | None]) -> None:
        """Change one container's limits in place (the ``resize`` subresource, a strategic
        merge patch; a None value removes that limit).

        Raises:
            LabError: refused, e.g. 404 on a cluster without in-place pod resize.
        """
        body = {"spec": {"containers": [{"name": container, "resources": {"limits": limits}}]}}
        self._call(f"resize {container} of pod {namespace}/{name}",
                   lambda: self.core.patch_namespaced_pod_resize(
                       name, namespace, body, _content_type=STRATEGIC_MERGE,
                       _preload_content=False))

    def list_services(self, namespace: str) -> list[dict[str, Any]]:
        """Every Service of ``namespace``."""
        return self._json(f"list services in {namespace}",
                          lambda: self.core.list_namespaced_service(
                              namespace, _preload_content=False))["items"]

    def list_events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        """Events of ``namespace`` (only those about object ``name`` when given)."""
        selector = f"involvedObject.name={name}" if name else None
        return self._json(f"list events in {namespace}", lambda: self.core.list_namespaced_event(
            namespace, field_selector=selector, _preload_content=False))["items"]

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """The container's log so far (``kubectl logs -c <container>``)."""
        resp = self._call(f"logs of {namespace}/{pod} -c {container}",
                          lambda: self.core.read_namespaced_pod_log(
                              pod, namespace, container=container, _preload_content=False))
        return resp.data.decode(errors="replace")

    # streams (exec and port-forward: :class:`KubeStreams`) ---------------------------------
    def add_ephemeral_container(self, namespace: str, pod: str,
                                container: dict[str, Any]) -> None:
        """Add an ephemeral container to a running pod (``kubectl debug``: a strategic merge
        patch of the ``ephemeralcontainers`` subresource)."""
        body = {"spec": {"ephemeralContainers": [container]}}
        self._call(f"add debug container {container['name']} to {namespace}/{pod}",
                   lambda: self.core.patch_namespaced_pod_ephemeralcontainers(
                       pod, namespace, body, _content_type=STRATEGIC_MERGE,
                       _preload_content=False))
