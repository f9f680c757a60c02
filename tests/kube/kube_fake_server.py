"""An in-test Kubernetes API server (a thread running ``http.server``) for the kube env tests.

It speaks the REST paths the kube env uses, in memory: nodes; namespaces (create, read,
delete; a deleted namespace answers ``Terminating`` for ``delete_polls`` reads, then 404);
namespaced objects of any collection (``/api/v1/...`` or ``/apis/<group>/<version>/...``:
POST → 201 or 409, GET, PUT); pods with status, which a created StatefulSet/Deployment gets
from a tiny "controller" (node from the nodeSelector / affinity, ``istio-proxy`` injected as
Istio would, Ready unless the workload is listed in ``not_ready``; a deleted pod is
terminating for ``delete_polls`` reads, then created again with a new uid); events (fieldSelector
``involvedObject.name``); logs; Jobs, whose pod a tiny "job controller" creates with its
phase and log from :attr:`FakeKube.job_handler` (the test's kubelet); the ``ephemeralcontainers``
subresource; and exec and
port-forward over a minimal WebSocket (RFC 6455) with the ``v5/v4.channel.k8s.io`` framing.
Every request is recorded (method, path, query, JSON body), so tests assert what the real
``kubernetes`` client sent, pointed at this server through a generated kubeconfig.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import yaml

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NS = r"/api/v1/namespaces/(?P<ns>[^/]+)"
_COLLECTION = re.compile(r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/"
                         r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A server→client WebSocket frame (FIN, unmasked)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", n)
    return head + payload


def ws_read(rfile: Any) -> tuple[int, bytes] | None:
    """One client→server frame ``(opcode, unmasked payload)``, None at EOF."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b""
    data = rfile.read(n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return head[0] & 0x0F, data


class FakeKube:
    """The fake API server and its state (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (collection, ns, name)
        self.nodes: list[dict[str, Any]] = []
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.logs: dict[tuple[str, str, str], str] = {}
        #: workload → (waiting reason, message) for its pods' first container
        self.not_ready: dict[str, tuple[str, str]] = {}
        #: workload → event ``(reason, message)`` and the pods left Pending, unscheduled
        self.unscheduled: dict[str, tuple[str, str]] = {}
        self.delete_polls = 1
        #: whether ``pods/<name>/resize`` exists (in-place pod resize, Kubernetes >= 1.33)
        self.resize_supported = True
        self.exec_handler: Callable[[str, str, list[str], bytes], tuple[int, str, str]] = \
            lambda pod, container, argv, stdin: (0, "", "")
        self.admin_handler: Callable[[str, str, str], tuple[int, str]] = \
            lambda pod, method, path: (404, "not found\n")
        self.admin_requests: list[str] = []
        #: ``(namespace, Job) -> state()``; ``state() -> (phase, log)`` is read whenever the
        #: Job's pod is (default: Succeeded at once with an empty log)
        self.job_handler: Callable[[str, dict[str, Any]], Callable[[], tuple[str, str]]] = \
            lambda ns, job: lambda: ("Succeeded", "")
        self._job_pods: dict[tuple[str, str], Callable[[], tuple[str, str]]] = {}
        self._gone_after: dict[str, int] = {}
        #: deleted pods → reads left before their controller creates them again
        self._pod_gone_after: dict[tuple[str, str], int] = {}
        self._uids = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
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
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}))
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

    # the "controller" ------------------------------------------------------------------
    def _spawn_pods(self, ns: str, wl: dict[str, Any]) -> None:
        template, name = wl["spec"]["template"], wl["metadata"]["name"]
        spec = template["spec"]
        nodes = [spec.get("nodeSelector", {}).get("kubernetes.io/hostname")] \
            if spec.get("nodeSelector") else \
            spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
        meta = template.get("metadata") or {}
        opt = (meta.get("annotations") or {}).get("sidecar.istio.io/inject", "")
        inject = (self.namespaces[ns]["metadata"]["labels"].get("istio-injection") == "enabled"
                  and opt != "false")
        containers = [{"name": c["name"], "image": c["image"]} for c in spec["containers"]]
        if inject:
            containers.append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24"})
        for i in range(wl["spec"].get("replicas", 1)):
            pod = f"{name}-{i}"
            status: dict[str, Any] = {"phase": "Running", "podIP": f"10.244.9.{len(self.pods) + 2}",
                                      "conditions": [{"type": "Ready", "status": "True"}],
                                      "containerStatuses": [{"name": c["name"], "ready": True,
                                                             "state": {"running": {}}}
                                                            for c in containers]}
            if name in self.not_ready:
                reason, message = self.not_ready[name]
                status["conditions"] = [{"type": "Ready", "status": "False"}]
                status["containerStatuses"][0] = {"name": containers[0]["name"], "ready": False,
                                                  "state": {"waiting": {"reason": reason,
                                                                        "message": message}}}
            if name in self.unscheduled:
                reason, message = self.unscheduled[name]
                status = {"phase": "Pending"}
                self.events.append({"metadata": {"namespace": ns},
                                    "involvedObject": {"kind": "Pod", "name": pod},
                                    "reason": reason, "message": message, "type": "Warning",
                                    "lastTimestamp": "2026-01-01T00:00:00Z"})
            self._uids += 1
            self.pods[(ns, pod)] = {
                "metadata": {"name": pod, "namespace": ns, "labels": dict(meta.get("labels") or {}),
                             "uid": f"uid-{self._uids}",
                             "ownerReferences": [{"kind": wl["kind"], "name": name}]},
                "spec": {"nodeName": nodes[i % len(nodes)] if name not in self.unscheduled else
                         None, "containers": containers},
                "status": status}

    def _spawn_job_pod(self, ns: str, job: dict[str, Any]) -> None:
        name, template = job["metadata"]["name"], job["spec"]["template"]
        pod = f"{name}-{len(self.pods):05d}"[:63]
        self.pods[(ns, pod)] = {
            "metadata": {"name": pod, "namespace": ns,
                         "labels": {**(template["metadata"].get("labels") or {}),
                                    "job-name": name},
                         "ownerReferences": [{"kind": "Job", "name": name}]},
            "spec": {**template["spec"], "nodeName": (template["spec"].get("nodeSelector") or {})
                     .get("kubernetes.io/hostname")},
            "status": {"phase": "Pending"}}
        self._job_pods[(ns, pod)] = self.job_handler(ns, job)

    def _refresh_job_pods(self) -> None:
        for key, state in self._job_pods.items():
            if key in self.pods:
                phase, log = state()
                self.pods[key]["status"]["phase"] = phase
                container = self.pods[key]["spec"]["containers"][0]["name"]
                self.logs[(key[0], key[1], container)] = log

    # request handling --------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any
               ) -> tuple[int, Any]:
        """Answer one REST request: ``(status, JSON-able body or str)``."""
        with self._lock:
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any
               ) -> tuple[int, Any]:
        if path == "/api/v1/nodes":
            return 200, {"kind": "NodeList", "items": self.nodes}
        if path == "/api/v1/namespaces" and method == "POST":
            name = body["metadata"]["name"]
            if name in self.namespaces:
                return _status(409, "AlreadyExists", f'namespaces "{name}" already exists')
            self.namespaces[name] = {**body, "status": {"phase": "Active"}}
            return 201, self.namespaces[name]
        if m := re.match(f"^{_NS}$", path):
            return self._namespace(method, m["ns"], body)
        if m := re.match(f"^{_NS}/events$", path):
            want = (query.get("fieldSelector") or [""])[0].removeprefix("involvedObject.name=")
            return 200, {"items": [e for e in self.events if e["metadata"]["namespace"] == m["ns"]
                                   and (not want or e["involvedObject"]["name"] == want)]}
        if m := re.match(f"^{_NS}/pods(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$", path):
            return self._pods(method, m["ns"], m["name"], m["sub"], query, body)
        if m := _COLLECTION.match(path):
            return self._objects(method, m, query, body)
        return _status(404, "NotFound", f"no route {method} {path}")

    def _namespace(self, method: str, ns: str, body: Any) -> tuple[int, Any]:
        if ns not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{ns}" not found')
        if method == "PATCH":  # labels only, merge semantics (None removes)
            labels = self.namespaces[ns]["metadata"].setdefault("labels", {})
            for key, value in body["metadata"]["labels"].items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            return 200, self.namespaces[ns]
        if method == "DELETE":
            self.namespaces[ns]["status"] = {"phase": "Terminating"}
            self._gone_after[ns] = self.delete_polls
            for key in [k for k in self.objects if k[1] == ns]:
                del self.objects[key]
            for key in [k for k in self.pods if k[0] == ns]:
                del self.pods[key]
            return 200, self.namespaces[ns]
        if ns in self._gone_after:
            if self._gone_after[ns] <= 0:
                del self.namespaces[ns], self._gone_after[ns]
                return _status(404, "NotFound", f'namespaces "{ns}" not found')
            self._gone_after[ns] -= 1
        return 200, self.namespaces[ns]

    def _recreate_deleted_pods(self) -> None:
        """The StatefulSet controller: a deleted pod answers terminating for ``delete_polls``
        reads, then is there again with a new uid, Ready, restart counts 0."""
        for key, left in list(self._pod_gone_after.items()):
            if left > 0:
                self._pod_gone_after[key] = left - 1
                continue
            del self._pod_gone_after[key]
            old = self.pods[key]
            self._uids += 1
            meta = {k: v for k, v in old["metadata"].items() if k != "deletionTimestamp"}
            self.pods[key] = {**old, "metadata": {**meta, "uid": f"uid-{self._uids}"},
                              "status": {**old["status"],
                                         "conditions": [{"type": "Ready", "status": "True"}],
                                         "containerStatuses": [
                                             {"name": c["name"], "ready": True, "restartCount": 0,
                                              "state": {"running": {}}}
                                             for c in old["spec"]["containers"]]}}

    def _pods(self, method: str, ns: str, name: str | None, sub: str | None,
              query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        self._refresh_job_pods()
        self._recreate_deleted_pods()
        if name is None:
            return 200, {"kind": "PodList", "items": [p for (n, _), p in self.pods.items()
                                                      if n == ns]}
        pod = self.pods.get((ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if sub == "resize" and method == "PATCH":
            if not self.resize_supported:
                return _status(404, "NotFound", "the server could not find the requested "
                                                "resource")
            for patch in body["spec"]["containers"]:
                for c in pod["spec"]["containers"]:
                    if c["name"] == patch["name"]:
                        limits = c.setdefault("resources", {}).setdefault("limits", {})
                        for key, value in patch["resources"]["limits"].items():
                            if value is None:
                                limits.pop(key, None)
                            else:
                                limits[key] = value
            return 200, pod
        if method == "DELETE" and sub is None:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
            self._pod_gone_after[(ns, name)] = self.delete_polls
            return 200, pod
        if sub == "log":
            return 200, self.logs.get((ns, name, query["container"][0]), "")
        if sub == "ephemeralcontainers" and method == "PATCH":
            for c in body["spec"]["ephemeralContainers"]:
                pod["spec"].setdefault("ephemeralContainers", []).append(c)
                pod["status"].setdefault("ephemeralContainerStatuses", []).append(
                    {"name": c["name"], "state": {"running": {"startedAt": "now"}}})
            return 200, pod
        return 200, pod

    def _objects(self, method: str, m: re.Match[str], query: dict[str, list[str]], body: Any
                 ) -> tuple[int, Any]:
        collection, ns, name = f"{m['prefix']}/{m['plural']}", m["ns"], m["name"]
        if ns not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{ns}" not found')
        if method == "POST":
            key = (collection, ns, body["metadata"]["name"])
            if key in self.objects:
                return _status(409, "AlreadyExists", f"{key[2]} already exists")
            obj = json.loads(json.dumps(body))
            obj["metadata"]["resourceVersion"] = "1"
            if body.get("kind") == "Service":
                obj["spec"]["clusterIP"] = f"10.96.0.{len(self.objects) + 10}"
            self.objects[key] = obj
            if body.get("kind") in ("StatefulSet", "Deployment"):
                self._spawn_pods(ns, body)
            if body.get("kind") == "Job":
                self._spawn_job_pod(ns, obj)
            return 201, obj
        if name is None:
            selector = dict(kv.split("=", 1) for kv in (query.get("labelSelector") or [""])[0]
                            .split(",") if kv)
            return 200, {"items": [o for (c, n, _), o in self.objects.items()
                                   if c == collection and n == ns and selector.items()
                                   <= (o["metadata"].get("labels") or {}).items()]}
        key = (collection, ns, name)
        if key not in self.objects:
            return _status(404, "NotFound", f"{name} not found")
        if method == "DELETE":
            gone = self.objects.pop(key)
            for pod in [k for k, p in self.pods.items() if k[0] == ns and
                        p["metadata"]["ownerReferences"][0]["name"] == name
                        and gone.get("kind") in ("StatefulSet", "Deployment", "Job")]:
                del self.pods[pod]
            return 200, gone
        if method == "PUT":
            self.objects[key] = json.loads(json.dumps(body))
        return 200, self.objects[key]


def _status(code: int, reason: str, message: str) -> tuple[int, Any]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                  "message": message, "code": code}


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            fake.requests.append(Recorded(self.command, url.path, query, body,
                                          dict(self.headers)))
            if self.headers.get("Upgrade", "").lower() == "websocket":
                self._websocket(url.path, query)
                return
            status, answer = fake.handle(self.command, url.path, query, body)
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(answer, str)
                             else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def _websocket(self, path: str, query: dict[str, list[str]]) -> None:
            offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            proto = "v5.channel.k8s.io" if "v5.channel.k8s.io" in offered else offered[0]
            accept = base64.b64encode(hashlib.sha1(
                (self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode()).digest()).decode()
            self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                              f"Sec-WebSocket-Protocol: {proto}\r\n\r\n").encode())
            pod = path.split("/")[-2]
            if path.endswith("/exec"):
                self._exec(pod, query)
            else:
                self._portforward(pod, int(query["ports"][0]))
            self.close_connection = True

        def _exec(self, pod: str, query: dict[str, list[str]]) -> None:
            stdin = b""
            if query.get("stdin") == ["true"]:
                while (frame := ws_read(self.rfile)) is not None:
                    if frame[1][:1] == b"\x00":
                        stdin += frame[1][1:]
                    elif frame[1] == b"\xff\x00":  # v5: stdin closed
                        break
            rc, out, err = fake.exec_handler(pod, query["container"][0], query["command"], stdin)
            status = {"metadata": {}, "status": "Success"} if rc == 0 else {
                "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: exit code {rc}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
            for channel, data in ((1, out.encode()), (2, err.encode()),
                                  (3, json.dumps(status).encode())):
                if data:
                    self.wfile.write(ws_frame(2, bytes([channel]) + data))
            self.wfile.write(ws_frame(8, struct.pack(">H", 1000)))

        def _portforward(self, pod: str, port: int) -> None:
            port_bytes = struct.pack("<H", port)
            self.wfile.write(ws_frame(2, b"\x00" + port_bytes) + ws_frame(2, b"\x01" + port_bytes))
            request = b""
            while b"\r\n\r\n" not in request:
                frame = ws_read(self.rfile)
                if frame is None or frame[0] == 8:
                    return
                if frame[1][:1] == b"\x00":
                    request += frame[1][1:]
            method, target, _ = request.split(b"\r\n")[0].decode().split(" ")
            fake.admin_requests.append(request.decode())
            status, text = fake.admin_handler(pod, method, target)
            data = text.encode()
            reply = (f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n").encode() + data
            self.wfile.write(ws_frame(2, b"\x00" + reply))
            while (frame := ws_read(self.rfile)) is not None and frame[0] != 8:
                pass  # until the client closes its side
            self.wfile.write(ws_frame(8, struct.pack(">H", 1000)))

    return Handler


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
