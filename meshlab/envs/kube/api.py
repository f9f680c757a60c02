"""One small facade over the official ``kubernetes`` client: every call the kube env makes.

Objects go in and come out as plain JSON-shaped dicts (camelCase keys, as ``kubectl get -o json``
prints them), so the env, the dry-run facade (:mod:`meshlab.envs.kube.dry_run`) and the tests
share one shape. Client exceptions are translated here, at the boundary: an HTTP error becomes
a :class:`~meshlab.errors.LabError` naming the call, the status and the API server's message; a
body the client's models reject becomes a :class:`~meshlab.errors.ConfigError`.

Streams use ``kubernetes.stream``: exec over the ``v5.channel.k8s.io``/``v4.channel.k8s.io``
WebSocket protocols (channel 1 stdout, 2 stderr, 3 the exit ``Status``), port-forward over the
port-forward protocol (the way ``istioctl`` reaches Envoy's admin port: istio
``pkg/kube/client.go`` ``EnvoyDo`` → ``portForwardRequest(..., 15000)``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pydantic
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward, stream
from websocket import WebSocketException

from meshlab.envs.base import CommandResult
from meshlab.envs.kube.facade import TYPED_KINDS, custom_plural, kubectl_exec_argv
from meshlab.errors import ConfigError, LabError

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


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason)


class KubeApi:
    """The facade over a real API server.

    Args:
        api: a configured ``kubernetes.client.ApiClient`` (see :func:`api_client`).
    """

    dry_run = False

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
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
        """Run ``fn``, translating client errors; a 404 gives None when ``missing_ok``."""
        try:
            return fn()
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise LabError(f"{what}: HTTP {exc.status} {exc.reason}: {_status_message(exc)} "
                           f"(API server {self.server})") from exc
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
        """Delete namespace ``name`` (foreground); False when it did not exist."""
        return self._call(f"delete namespace {name}", lambda: self.core.delete_namespace(
            name, propagation_policy="Foreground", _preload_content=False),
            missing_ok=True) is not None

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
            found = self._json(what, lambda: getattr(api, f"list_{verb}")(
                namespace, label_selector=selector, _preload_content=False), missing_ok=True)
            names = [o["metadata"]["name"] for o in (found or {}).get("items", [])]
            for name in names:
                self._call(what, partial(getattr(api, f"delete_{verb}"), name, namespace,
                                         propagation_policy="Foreground",
                                         _preload_content=False), missing_ok=True)
            return names
        group, _, ver = api_version.partition("/")
        plural, custom = custom_plural(kind), self.custom
        found = self._json(what, lambda: custom.list_namespaced_custom_object(
            group, ver, namespace, plural, label_selector=selector, _preload_content=False),
            missing_ok=True)
        names = [o["metadata"]["name"] for o in (found or {}).get("items", [])]
        for name in names:
            self._call(what, partial(custom.delete_namespaced_custom_object, group, ver,
                                     namespace, plural, name, _preload_content=False),
                       missing_ok=True)
        return names

    def apply(self, namespace: str, body: dict[str, Any]) -> str:
        """Create ``body`` in ``namespace``, or replace the existing object of that name.

        Returns:
            ``"created"`` or ``"replaced"``.

        Raises:
            ConfigError: an unsupported kind, or a body the client's models reject.
            LabError: the API server refused.
        """
        kind, version = str(body.get("kind")), str(body.get("apiVersion"))
        name = body["metadata"]["name"]
        what = f"apply {kind}/{name} in {namespace}"
        create, read, replace = self._verbs(version, kind, namespace, name)
        try:
            self._call(what, lambda: create(body))
            return "created"
        except LabError as exc:  # a 409 means it exists: replace it
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 409):
                raise
        existing = self._json(what, read)
        merged = json.loads(json.dumps(body))
        merged["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
        if kind == "Service":  # spec.clusterIP(s) are immutable: keep the allocated ones
            for key in ("clusterIP", "clusterIPs"):
                if key in existing.get("spec", {}):
                    merged["spec"][key] = existing["spec"][key]
        self._call(what, lambda: replace(merged))
        return "replaced"

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

    # streams -----------------------------------------------------------------------------
    def add_ephemeral_container(self, namespace: str, pod: str,
                                container: dict[str, Any]) -> None:
        """Add an ephemeral container to a running pod (``kubectl debug``: a strategic merge
        patch of the ``ephemeralcontainers`` subresource)."""
        body = {"spec": {"ephemeralContainers": [container]}}
        self._call(f"add debug container {container['name']} to {namespace}/{pod}",
                   lambda: self.core.patch_namespaced_pod_ephemeralcontainers(
                       pod, namespace, body, _content_type=STRATEGIC_MERGE,
                       _preload_content=False))

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], *,
             timeout_s: float, input_text: str | None = None) -> CommandResult:
        """Run ``argv`` in a container to completion (no TTY).

        Stdin is closed after ``input_text`` only on the ``v5.channel.k8s.io`` protocol
        (Kubernetes ≥ 1.30); on v4 a command that reads stdin to EOF runs until ``timeout_s``.

        Raises:
            LabError: the exec could not start (e.g. the program is not in the image), or
                ``timeout_s`` passed.
        """
        shown = kubectl_exec_argv(namespace, pod, container, argv)
        what = " ".join(shown)
        start = time.monotonic()
        ws = self._open_exec(what, namespace, pod, container, argv, input_text is not None)
        try:
            if input_text is not None:
                ws.write_stdin(input_text)
                ws.close_channel(0)
            try:
                ws.run_forever(timeout=timeout_s)
            except WebSocketException:
                ws._connected = False  # the server dropped the connection: what came is all
            if ws.is_open():
                raise LabError(f"command timed out after {timeout_s:g} s: {what}")
            out, err, status = (ws.read_channel(c) for c in (1, 2, 3))
        finally:
            ws.close()
        return CommandResult(argv=shown, returncode=exit_code(status, what), stdout=out,
                             stderr=err, duration_s=time.monotonic() - start)

    def exec_stream(self, namespace: str, pod: str, container: str, argv: list[str]) -> Any:
        """Start ``argv`` in a container (no stdin, no TTY) and return the open exec stream
        (``kubernetes.stream.ws_client.WSClient``: channels 1 stdout, 2 stderr, 3 the exit
        ``Status``), for a background command (:class:`meshlab.envs.kube.process.ExecProcess`).

        Raises:
            LabError: the exec could not start.
        """
        what = " ".join(kubectl_exec_argv(namespace, pod, container, argv))
        return self._open_exec(what, namespace, pod, container, argv, False)

    def _open_exec(self, what: str, namespace: str, pod: str, container: str, argv: list[str],
                   stdin: bool) -> Any:
        return self._call(what, lambda: stream(
            self.core.connect_get_namespaced_pod_exec, pod, namespace, command=list(argv),
            container=container, stdin=stdin, stdout=True, stderr=True, tty=False,
            _preload_content=False))

    def port_forward_http(self, namespace: str, pod: str, port: int, method: str, path: str, *,
                          timeout_s: float) -> tuple[int, str]:
        """One HTTP request to ``127.0.0.1:<port>`` inside the pod through a port-forward.

        Returns:
            ``(status, body)``.

        Raises:
            LabError: the port-forward failed or nothing answered on the port.
        """
        what = f"port-forward {namespace}/{pod}:{port} {method} {path}"
        pf = self._call(what, lambda: portforward(
            self.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            sock = pf.socket(port)
            sock.settimeout(timeout_s)
            conn.sock = sock
            conn.request(method, path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            raise LabError(f"{what}: {exc!r}; port-forward error: {pf.error(port)}") from exc
        finally:
            conn.close()
            pf.close()


def exit_code(status_text: str, what: str) -> int:
    """The exit code from an exec's ``Status`` (channel 3).

    Raises:
        LabError: the exec failed without an exit code (program not found, container gone).
    """
    if not status_text.strip():
        raise LabError(f"{what}: the exec ended without a status (connection lost)")
    try:
        status = json.loads(status_text)
    except ValueError:
        raise LabError(f"{what}: exec failed: {status_text.strip()[:300]}") from None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    raise LabError(f"{what}: {status.get('reason') or 'exec failed'}: {status.get('message')}")
