"""An in-test Kubernetes API server (a thread running ``http.server``) for the kube env tests.

It keeps the API conventions the ``kubernetes`` client and the kube env depend on, in memory:

- REST paths of nodes, namespaces, pods (status, log, ``resize``, ``ephemeralcontainers``),
  events (fieldSelector ``involvedObject.name``) and namespaced objects of every served
  resource (``/api/v1/...``, ``/apis/<group>/<version>/...``); discovery of a group version.
- Failures as Failure ``Status`` bodies (:mod:`fake_status`): 404 for a missing object, the
  generic 404 for a group not served (a CRD not installed: :attr:`FakeKube.crd_groups`),
  403 for a verb RBAC denies (:meth:`FakeKube.forbid`) or a create in a terminating
  namespace, 409 AlreadyExists (``object is being deleted:`` for a terminating one) and
  Conflict, 422 Invalid with field causes (:mod:`fake_schema`), 400 for a bad selector.
- Deletion with ``deletionTimestamp`` and a grace period counted in requests (one tick per
  request; :attr:`FakeKube.delete_polls`), owners and controllers (:mod:`fake_controllers`).
- Exec and port-forward over WebSocket, refused before the upgrade when the API server would
  refuse them (:mod:`fake_ws`).

Every request is recorded (method, path, query, JSON body, headers), so tests assert what the
real ``kubernetes`` client sent, pointed at this server through a generated kubeconfig.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import yaml
from fake_controllers import STAMP, Controllers, Key, container_refusal, resize
from fake_schema import (
    SelectorError,
    discovery,
    parse_selector,
    request_attributes,
    selects,
    served,
    validate,
)
from fake_status import (
    Answer,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    invalid,
    not_found,
    not_served,
)
from fake_ws import V4, V5, Recorded, handler

__all__ = ["LAB", "OPT_IN", "FakeKube", "Recorded", "kube_env"]

_NS = r"/api/v1/namespaces/(?P<ns>[^/]+)"
_PODS = re.compile(f"^{_NS}/pods(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$")
_COLLECTION = re.compile(r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/"
                         r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")
_TERMINATING = "because it is being terminated"


class FakeKube(Controllers):
    """The fake API server and its state (see the module docstring).

    Attributes:
        delete_polls: requests a deleted pod stays terminating (and a force-deleted
            StatefulSet pod stays absent), and a deleted namespace answers ``Terminating``.
        resize_supported: whether ``pods/<name>/resize`` exists (Kubernetes >= 1.33).
        crd_groups: the CRD groups installed (default: Istio's and Chaos Mesh's).
        exec_protocols: the exec subprotocols the server supports (a cluster before 1.30:
            ``(V4,)``).
        frame_bytes: the largest stdout/stderr frame an exec sends.
        user: the user RBAC refusals name.
        exec_handler: ``(pod, container, argv, stdin) -> (exit code, stdout, stderr)``; may
            raise :class:`fake_ws.ExecError` / :class:`fake_ws.DropConnection`.
        admin_handler: ``(pod, method, path) -> (status, body)`` behind a port-forward.
        job_handler: ``(namespace, Job) -> state()``; ``state() -> (phase, log)`` is read
            whenever the Job's pod is (default: Succeeded at once with an empty log).
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.objects: dict[Key, dict[str, Any]] = {}  # (collection, ns, name)
        self.nodes: list[dict[str, Any]] = []
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.logs: dict[tuple[str, str, str], str] = {}
        #: workload → (waiting reason, message) for its pods' first container
        self.not_ready: dict[str, tuple[str, str]] = {}
        #: workload → event ``(reason, message)`` and the pods left Pending, unscheduled
        self.unscheduled: dict[str, tuple[str, str]] = {}
        self.delete_polls = 1
        self.resize_supported = True
        self.crd_groups = {"networking.istio.io", "telemetry.istio.io", "security.istio.io",
                           "chaos-mesh.org"}
        self.exec_protocols: tuple[str, ...] = (V5, V4)
        self.frame_bytes = 64
        self.user = "tester"
        self.exec_handler: Callable[[str, str, list[str], bytes], tuple[int, str, str]] = \
            lambda pod, container, argv, stdin: (0, "", "")
        self.admin_handler: Callable[[str, str, str], tuple[int, str]] = \
            lambda pod, method, path: (404, "not found\n")
        self.admin_requests: list[str] = []
        self.job_handler: Callable[[str, dict[str, Any]], Callable[[], tuple[str, str]]] = \
            lambda ns, job: lambda: ("Succeeded", "")
        self._job_pods: dict[tuple[str, str], Callable[[], tuple[str, str]]] = {}
        self._deadlines: dict[tuple[str, ...], int] = {}
        self._forbidden: set[tuple[str, str]] = set()
        self._counter, self._service_ips = 0, 10
        self._rng = random.Random(7)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def kubeconfig(self, folder: Path) -> str:
        """Write a kubeconfig for this server (context ``fake``) and return its path."""
        path = folder / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": self.user, "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": self.user}}]}))
        return str(path)

    def add_node(self, name: str, labels: dict[str, str] | None = None,
                 kernel: str = "6.1.0-18-amd64", ip: str = "10.0.0.1") -> None:
        """A cluster node (``kubernetes.io/hostname`` = name, plus ``labels``)."""
        self.nodes.append({"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"podCIDR": f"10.244.{len(self.nodes)}.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "nodeInfo": {"kernelVersion": kernel}}})

    def mutating(self) -> list[Recorded]:
        """The recorded requests that would change the cluster (POST, PUT, PATCH, DELETE)."""
        return [r for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]

    def forbid(self, resource: str, verb: str) -> None:
        """Deny ``verb`` on ``resource`` (``pods``, ``pods/exec``, ``virtualservices``…) to
        :attr:`user`, as a Role without that rule would: 403 Forbidden."""
        self._forbidden.add((resource, verb))

    def _denied(self, attrs: tuple[str, str, str, str, list[str]]) -> Answer | None:
        group, resource, ns, name, verbs = attrs
        verb = next((v for v in verbs if (resource, v) in self._forbidden), None)
        if verb is None:
            return None
        where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        return forbidden(resource.split("/")[0], name, f'User "{self.user}" cannot {verb} '
                         f'resource "{resource}" in API group "{group}" {where}', group)

    # request handling --------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any
               ) -> Answer:
        """Answer one REST request: ``(status, JSON-able body or str)``."""
        with self._lock:
            self.tick()
            attrs = request_attributes(method, path, query, upgrade=False)
            return (attrs and self._denied(attrs)) or self._route(method, path, query, body)

    def connect(self, method: str, path: str, query: dict[str, list[str]]) -> Answer | None:
        """The API server's checks of an exec / port-forward before the upgrade (RBAC, the
        pod, the container, a node): the refusal, or None to upgrade."""
        with self._lock:
            self.tick()
            attrs = request_attributes(method, path, query, upgrade=True)
            if attrs and (denied := self._denied(attrs)):
                return denied
            m = _PODS.match(path)
            pod = self.pods.get((m["ns"], m["name"])) if m else None
            if m is None or pod is None:
                return not_found("pods", m["name"] if m else path)
            if m["sub"] == "exec" and (refused := container_refusal(pod, query)):
                return refused
            if not pod["spec"].get("nodeName"):
                return bad_request(f"pod {m['name']} does not have a host assigned")
            return None

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any
               ) -> Answer:
        if path == "/api/v1/nodes":
            return 200, {"kind": "NodeList", "items": self.nodes}
        if m := re.match(r"^/apis/([^/]+/[^/]+)/?$", path):
            resources = served(m[1], self.crd_groups)
            return (200, discovery(m[1], resources)) if resources else not_served()
        if path == "/api/v1/namespaces":
            return self._create_namespace(body) if method == "POST" else (
                200, {"kind": "NamespaceList", "items": list(self.namespaces.values())})
        if m := re.match(f"^{_NS}$", path):
            return self._namespace(method, m["ns"], body)
        if m := re.match(f"^{_NS}/events$", path):
            want = (query.get("fieldSelector") or [""])[0].removeprefix("involvedObject.name=")
            return 200, {"items": [e for e in self.events if e["metadata"]["namespace"] == m["ns"]
                                   and (not want or e["involvedObject"]["name"] == want)]}
        if m := _PODS.match(path):
            return self._pods(method, m["ns"], m["name"], m["sub"], query, body)
        if m := _COLLECTION.match(path):
            return self._objects(method, m, query, body)
        return not_served()

    def _create_namespace(self, body: Any) -> Answer:
        name = (body.get("metadata") or {}).get("name") or ""
        if causes := validate("Namespace", body):
            return invalid("Namespace", "", name, causes)
        if name in self.namespaces:
            old = self.namespaces[name]
            return already_exists("namespaces", name, terminating=bool(
                old["metadata"].get("deletionTimestamp")))
        self.namespaces[name] = {**body, "metadata": {**body["metadata"], "uid": self.new_uid(),
                                                      "creationTimestamp": STAMP},
                                 "spec": {"finalizers": ["kubernetes"]},
                                 "status": {"phase": "Active"}}
        return 201, self.namespaces[name]

    def _namespace(self, method: str, ns: str, body: Any) -> Answer:
        if ns not in self.namespaces:
            return not_found("namespaces", ns)
        obj = self.namespaces[ns]
        if method == "PATCH":  # labels only, merge semantics (None removes)
            labels = obj["metadata"].setdefault("labels", {})
            for key, value in body["metadata"]["labels"].items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
        elif method == "DELETE":
            if obj["metadata"].get("deletionTimestamp"):
                return conflict("namespaces", ns, "The system is ensuring all content is "
                                "removed from this namespace.  Upon completion, this namespace "
                                "will automatically be purged by the system.")
            obj["metadata"]["deletionTimestamp"] = STAMP
            obj["status"] = {"phase": "Terminating"}
            self._deadlines[("namespace", ns)] = self.delete_polls
            for key in [k for k in self.objects if k[1] == ns]:
                del self.objects[key]
            for key in [k for k in self.pods if k[0] == ns]:
                del self.pods[key]
        return 200, obj

    def _pods(self, method: str, ns: str, name: str | None, sub: str | None,
              query: dict[str, list[str]], body: Any) -> Answer:
        self.refresh_job_pods()
        if name is None:
            try:
                wanted = parse_selector((query.get("labelSelector") or [""])[0])
            except SelectorError as exc:
                return bad_request(str(exc))
            return 200, {"kind": "PodList", "items": [
                p for (n, _), p in self.pods.items()
                if n == ns and selects(wanted, p["metadata"].get("labels") or {})]}
        pod = self.pods.get((ns, name))
        if pod is None:
            return not_found("pods", name)
        if sub == "resize" and method == "PATCH":
            return resize(pod, body) if self.resize_supported else not_served()
        if method == "DELETE" and sub is None:
            grace = (query.get("gracePeriodSeconds") or [None])[0]
            return 200, self.delete_pod(ns, name, None if grace is None else int(grace))
        if sub == "log":
            if refused := container_refusal(pod, query):
                return refused
            container = (query.get("container") or [pod["spec"]["containers"][0]["name"]])[0]
            return 200, self.logs.get((ns, name, container), "")
        if sub == "ephemeralcontainers" and method == "PATCH":
            for c in body["spec"]["ephemeralContainers"]:
                pod["spec"].setdefault("ephemeralContainers", []).append(c)
                pod["status"].setdefault("ephemeralContainerStatuses", []).append(
                    {"name": c["name"], "state": {"running": {"startedAt": "now"}}})
        elif sub is not None:
            return not_served()
        return 200, pod

    def _objects(self, method: str, m: re.Match[str], query: dict[str, list[str]], body: Any
                 ) -> Answer:
        prefix, ns, plural, name = m["prefix"], m["ns"], m["plural"], m["name"]
        gv = prefix.removeprefix("/api/").removeprefix("/apis/")
        resources = served(gv, self.crd_groups)
        if resources is None or plural not in resources:
            return not_served()
        kind, group = resources[plural], gv.rpartition("/")[0]
        collection = f"{prefix}/{plural}"
        if method == "POST":
            return self._create(collection, ns, plural, kind, group, body)
        if name is None:
            try:
                wanted = parse_selector((query.get("labelSelector") or [""])[0])
            except SelectorError as exc:
                return bad_request(str(exc))
            return 200, {"items": [o for (c, n, _), o in self.objects.items()
                                   if c == collection and n == ns
                                   and selects(wanted, o["metadata"].get("labels") or {})]}
        key = (collection, ns, name)
        if key not in self.objects:
            return not_found(plural, name, group)
        if method == "DELETE":
            policy = (query.get("propagationPolicy") or [(body or {}).get("propagationPolicy")])
            default = "Orphan" if kind == "Job" else "Background"  # batch/v1 Jobs orphan
            return 200, self.delete_object(key, policy[0] or default)
        if method == "PUT":
            return self._replace(key, plural, kind, group, body)
        return 200, self.objects[key]

    def _create(self, collection: str, ns: str, plural: str, kind: str, group: str,
                body: Any) -> Answer:
        meta = body.get("metadata") or {}
        name = meta.get("name") or ""
        if ns not in self.namespaces:
            return not_found("namespaces", ns)
        if self.namespaces[ns].get("status", {}).get("phase") == "Terminating":
            return forbidden(plural, name, f"unable to create new content in namespace {ns} "
                             f"{_TERMINATING}", group, [{
                                 "reason": "NamespaceTerminating", "field": "metadata.namespace",
                                 "message": f"namespace {ns} is being terminated"}])
        if meta.get("namespace") not in (None, ns):
            return bad_request("the namespace of the provided object does not match the "
                               "namespace sent on the request")
        if causes := validate(kind, body):
            return invalid(kind, group, name, causes)
        key = (collection, ns, name)
        if key in self.objects:
            return already_exists(plural, name, group, terminating=bool(
                self.objects[key]["metadata"].get("deletionTimestamp")))
        obj = json.loads(json.dumps(body))
        obj["metadata"].update(namespace=ns, uid=self.new_uid(), resourceVersion="1",
                               creationTimestamp=STAMP, generation=1)
        if kind == "Service":
            obj["spec"]["clusterIP"] = f"10.96.0.{self._service_ips}"
            self._service_ips += 1
        self.objects[key] = obj
        if kind in ("StatefulSet", "Deployment", "Job"):
            self.spawn(ns, obj)
        return 201, obj

    def _replace(self, key: Key, plural: str, kind: str, group: str, body: Any) -> Answer:
        old = self.objects[key]
        version = (body.get("metadata") or {}).get("resourceVersion")
        if version not in (None, old["metadata"]["resourceVersion"]):  # before validation
            return conflict(plural, key[2], "the object has been modified; please apply your "
                            "changes to the latest version and try again", group)
        if causes := validate(kind, body, old):
            return invalid(kind, group, key[2], causes)
        obj = json.loads(json.dumps(body))
        kept = ("namespace", "uid", "creationTimestamp", "deletionTimestamp", "finalizers")
        obj["metadata"].update({k: old["metadata"][k] for k in kept if k in old["metadata"]})
        obj["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        self.objects[key] = obj
        return 200, obj


OPT_IN = {"meshlab.io/chaos": "allowed"}
LAB = "kube1"


def kube_env(fake: FakeKube, folder: Path, overlays: tuple[str, ...] = (), api: Any = None,
             **settings: Any) -> Any:
    """A :class:`KubeEnv` of base + ``overlays`` talking to ``fake`` through a kubeconfig
    (settings: ``ready_timeout_s`` 5 s unless given, plus ``settings``; ``api``: a facade to
    use instead, e.g. a :class:`DryRunApi` printing to a buffer)."""
    from meshlab.envs.kube.env import KubeEnv
    from meshlab.envs.kube.settings import KubeSettings
    from meshlab.envs.manifest_sets import manifest_set

    values = {"kubeconfig": fake.kubeconfig(folder), "ready_timeout_s": 5.0, **settings}
    return KubeEnv(manifest_set(None, overlays), KubeSettings(**values), lab=LAB, api=api,
                   poll_s=0.02)
