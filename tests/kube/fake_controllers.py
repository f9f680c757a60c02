"""The controllers, kubelet and garbage collector of the in-test API server
(:mod:`kube_fake_server`), reduced to what the kube env can observe:

- **Ownership**: a StatefulSet owns its pods ``<sts>-<ordinal>`` directly; a Deployment owns
  a ReplicaSet ``<deploy>-<pod-template-hash>`` (the hash derived from the pod template),
  which owns pods ``<rs>-<5 chars>``; a Job owns its pod ``<job>-<5 chars>``. Every owner
  reference is ``controller: true`` with the owner's uid, pods carry the owner's selector
  labels plus ``pod-template-hash`` / ``controller-revision-hash`` / ``job-name``.
- **Pod deletion**: graceful (``deletionTimestamp``, not Ready) for ``delete_polls`` ticks of
  the server's clock (one tick per request), then gone; immediate with
  ``gracePeriodSeconds=0`` (force), or for a pod that has ended or was never scheduled. A
  ReplicaSet replaces a deleted pod at once under a new name; a StatefulSet recreates the
  same name (new uid) once the old pod is gone (after a force delete: ``delete_polls`` ticks
  later, the controller's reaction time).
- **Cascading deletion**: deleting an owner deletes its dependents; with
  ``propagationPolicy=Foreground`` the owner stays, with a ``deletionTimestamp`` and the
  ``foregroundDeletion`` finalizer, until they are gone; ``Orphan`` leaves them, ownerless.
- **Injection**: ``istio-proxy`` is added to pods of a namespace labelled
  ``istio-injection=enabled`` unless the template opts out.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from fake_status import Answer, bad_request

STAMP = "2026-01-01T00:00:00Z"
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"  # the letters Kubernetes' generated names use
SIDECAR = {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24"}
REPLICASETS = "/apis/apps/v1/replicasets"
Key = tuple[str, str, str]


def template_hash(template: dict[str, Any]) -> str:
    """A ``pod-template-hash``: FNV-1a (32 bit) of the template, the characters of its decimal
    form each mapped onto :data:`ALPHANUMS` (stable for one template, another for another)."""
    h = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(ALPHANUMS[ord(c) % len(ALPHANUMS)] for c in str(h))


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ``controller: true`` owner reference of an object, if any."""
    return next((r for r in (obj.get("metadata") or {}).get("ownerReferences") or []
                 if r.get("controller")), None)


def _owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _nodes(spec: dict[str, Any]) -> list[str | None]:
    if spec.get("nodeSelector"):
        return [spec["nodeSelector"].get("kubernetes.io/hostname")]
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms") or [{}]
    return (terms[0].get("matchExpressions") or [{}])[0].get("values") or [None]


def container_refusal(pod: dict[str, Any], query: dict[str, list[str]]) -> Answer | None:
    """The API server's 400 for an exec or log of a container the pod does not have (its
    containers, init and ephemeral containers), or without one in a pod of several."""
    spec, name = pod["spec"], pod["metadata"]["name"]
    names = [c["name"] for key in ("containers", "initContainers", "ephemeralContainers")
             for c in spec.get(key) or []]
    container = (query.get("container") or [""])[0]
    if not container and len(spec["containers"]) > 1:
        return bad_request(f"a container name must be specified for pod {name}, choose "
                           f"one of: [{' '.join(c['name'] for c in spec['containers'])}]")
    if container and container not in names:
        return bad_request(f"container {container} is not valid for pod {name}")
    return None


def resize(pod: dict[str, Any], body: Any) -> Answer:
    """The ``resize`` subresource: a strategic merge of container limits (None removes)."""
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


class Controllers:
    """The fake's controllers (a mixin of :class:`kube_fake_server.FakeKube`, which holds the
    state below; see the module docstring for the behaviour)."""

    namespaces: dict[str, dict[str, Any]]
    objects: dict[Key, dict[str, Any]]
    pods: dict[tuple[str, str], dict[str, Any]]
    events: list[dict[str, Any]]
    logs: dict[tuple[str, str, str], str]
    not_ready: dict[str, tuple[str, str]]
    unscheduled: dict[str, tuple[str, str]]
    delete_polls: int
    job_handler: Callable[[str, dict[str, Any]], Callable[[], tuple[str, str]]]
    _job_pods: dict[tuple[str, str], Callable[[], tuple[str, str]]]
    #: what finishes after a number of ticks: ("pod"|"recreate", ns, name),
    #: ("object", collection, ns, name), ("namespace", ns) → ticks left
    _deadlines: dict[tuple[str, ...], int]
    _counter: int
    _rng: random.Random

    def new_uid(self) -> str:
        """A fresh ``metadata.uid``."""
        self._counter += 1
        return f"uid-{self._counter}"

    def _suffix(self) -> str:
        return "".join(self._rng.choice(ALPHANUMS) for _ in range(5))

    # creating pods -----------------------------------------------------------------------
    def _pod(self, ns: str, name: str, owner: dict[str, Any], template: dict[str, Any],
             workload: str, index: int, labels: dict[str, str]) -> None:
        spec, meta = template["spec"], template.get("metadata") or {}
        opt = (meta.get("annotations") or {}).get("sidecar.istio.io/inject", "")
        inject = ((self.namespaces[ns]["metadata"].get("labels") or {}).get(
            "istio-injection") == "enabled" and opt != "false")
        containers = [{"name": c["name"], "image": c["image"]} for c in spec["containers"]]
        containers += [dict(SIDECAR)] if inject else []
        status: dict[str, Any] = {
            "phase": "Running", "podIP": f"10.244.9.{self._counter + 2}",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0,
                                   "state": {"running": {}}} for c in containers]}
        if workload in self.not_ready:
            reason, message = self.not_ready[workload]
            status["conditions"] = [{"type": "Ready", "status": "False"}]
            status["containerStatuses"][0] = {"name": containers[0]["name"], "ready": False,
                                              "state": {"waiting": {"reason": reason,
                                                                    "message": message}}}
        nodes = _nodes(spec)
        node = nodes[index % len(nodes)]
        if workload in self.unscheduled:
            reason, message = self.unscheduled[workload]
            status, node = {"phase": "Pending"}, None
            self.events.append({"metadata": {"namespace": ns},
                                "involvedObject": {"kind": "Pod", "name": name},
                                "reason": reason, "message": message, "type": "Warning",
                                "lastTimestamp": STAMP})
        self.pods[(ns, name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": self.new_uid(),
                         "labels": {**(meta.get("labels") or {}), **labels},
                         "ownerReferences": [_owner_ref(owner)], "creationTimestamp": STAMP},
            "spec": {**{k: v for k, v in spec.items() if k != "containers"},
                     "nodeName": node, "containers": containers},
            "status": status}

    def _statefulset_pod(self, ns: str, sts: dict[str, Any], ordinal: int) -> None:
        name = f"{sts['metadata']['name']}-{ordinal}"
        self._pod(ns, name, sts, sts["spec"]["template"], sts["metadata"]["name"], ordinal,
                  {"statefulset.kubernetes.io/pod-name": name,
                   "apps.kubernetes.io/pod-index": str(ordinal),
                   "controller-revision-hash": f"{sts['metadata']['name']}-"
                                               f"{template_hash(sts['spec']['template'])}"})

    def _replicaset_pod(self, ns: str, rs: dict[str, Any]) -> None:
        index = sum(1 for p in self.pods.values() if self._owned(p, rs))
        deploy = controller_of(rs) or {"name": rs["metadata"]["name"]}
        self._pod(ns, f"{rs['metadata']['name']}-{self._suffix()}", rs, rs["spec"]["template"],
                  deploy["name"], index,
                  {"pod-template-hash": rs["metadata"]["labels"]["pod-template-hash"]})

    def spawn(self, ns: str, obj: dict[str, Any]) -> None:
        """Run the controller of a created workload (StatefulSet, Deployment, Job)."""
        kind, replicas = obj["kind"], (obj.get("spec") or {}).get("replicas", 1)
        if kind == "StatefulSet":
            for ordinal in range(replicas):
                self._statefulset_pod(ns, obj, ordinal)
        elif kind == "Deployment":
            template = obj["spec"]["template"]
            pth = template_hash(template)
            labels = {**((template.get("metadata") or {}).get("labels") or {}),
                      "pod-template-hash": pth}
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": f"{obj['metadata']['name']}-{pth}", "namespace": ns,
                               "uid": self.new_uid(), "labels": labels,
                               "ownerReferences": [_owner_ref(obj)], "resourceVersion": "1"},
                  "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                           "template": {**template, "metadata": {
                               **(template.get("metadata") or {}), "labels": labels}}}}
            self.objects[(REPLICASETS, ns, rs["metadata"]["name"])] = rs
            for _ in range(replicas):
                self._replicaset_pod(ns, rs)
        elif kind == "Job":
            name, template = obj["metadata"]["name"], obj["spec"]["template"]
            pod = f"{name}-{self._suffix()}"
            self._pod(ns, pod, obj, template, name, 0,
                      {"job-name": name, "batch.kubernetes.io/job-name": name,
                       "controller-uid": obj["metadata"]["uid"]})
            self.pods[(ns, pod)]["spec"] = {**template["spec"],
                                            "nodeName": self.pods[(ns, pod)]["spec"]["nodeName"]}
            self.pods[(ns, pod)]["status"] = {"phase": "Pending"}
            self._job_pods[(ns, pod)] = self.job_handler(ns, obj)

    def refresh_job_pods(self) -> None:
        """The kubelet of Job pods: phase and log from each pod's ``job_handler`` state."""
        for key, state in self._job_pods.items():
            if key in self.pods:
                phase, log = state()
                self.pods[key]["status"]["phase"] = phase
                container = self.pods[key]["spec"]["containers"][0]["name"]
                self.logs[(key[0], key[1], container)] = log

    # deleting ------------------------------------------------------------------------------
    @staticmethod
    def _owned(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
        ref = controller_of(obj)
        return ref is not None and ref.get("uid") == owner["metadata"].get("uid")

    def _live_owner(self, ns: str, pod: dict[str, Any]) -> dict[str, Any] | None:
        ref = controller_of(pod)
        for (_, n, _), obj in self.objects.items():
            if (ref and n == ns and obj["metadata"].get("uid") == ref.get("uid")
                    and not obj["metadata"].get("deletionTimestamp")):
                return obj
        return None

    def delete_pod(self, ns: str, name: str, grace: int | None) -> dict[str, Any]:
        """Delete a pod (see the module docstring); returns it as last seen."""
        pod = self.pods[(ns, name)]
        owner = self._live_owner(ns, pod)
        ended = pod["status"].get("phase") in ("Succeeded", "Failed")
        if grace == 0 or ended or not pod["spec"].get("nodeName"):
            del self.pods[(ns, name)]
            self._deadlines.pop(("pod", ns, name), None)
            if owner is not None and owner["kind"] == "StatefulSet":
                self._deadlines[("recreate", ns, name)] = self.delete_polls
        elif not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"]["deletionTimestamp"] = STAMP
            pod["metadata"]["deletionGracePeriodSeconds"] = 30 if grace is None else grace
            pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
            self._deadlines[("pod", ns, name)] = self.delete_polls
        else:
            return pod
        if owner is not None and owner["kind"] == "ReplicaSet":
            self._replicaset_pod(ns, owner)
        return pod

    def _dependents(self, ns: str, owner: dict[str, Any]) -> list[tuple[str, str]]:
        pods = [("pod", n) for (s, n), p in self.pods.items()
                if s == ns and self._owned(p, owner)]
        return pods + [(c, n) for (c, s, n), o in self.objects.items()
                       if s == ns and self._owned(o, owner)]

    def delete_object(self, key: Key, policy: str | None) -> dict[str, Any]:
        """Delete a stored object, cascading to its dependents by ``policy``."""
        obj = self.objects[key]
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        if policy != "Orphan":  # first, so that no controller replaces what goes with it
            obj["metadata"]["deletionTimestamp"] = STAMP
        for where, name in self._dependents(key[1], obj):
            dep = self.pods[(key[1], name)] if where == "pod" else self.objects[
                (where, key[1], name)]
            if policy == "Orphan":
                dep["metadata"]["ownerReferences"] = []
            elif where == "pod":
                self.delete_pod(key[1], name, None)
            else:
                self.delete_object((where, key[1], name), policy)
        if policy == "Foreground" and self._dependents(key[1], obj):
            obj["metadata"]["finalizers"] = ["foregroundDeletion"]
            self._deadlines[("object", *key)] = 0
        else:
            del self.objects[key]
        return obj

    def tick(self) -> None:
        """One tick of the server's clock (every request is one): finish what is due."""
        due = []
        for key, left in list(self._deadlines.items()):
            if left > 0:
                self._deadlines[key] = left - 1
            else:
                due.append(key)
        for key in sorted(due, key=lambda k: ["pod", "recreate", "object", "namespace"].index(
                k[0])):
            if self._finish(key):
                del self._deadlines[key]

    def _finish(self, key: tuple[str, ...]) -> bool:
        """Finish one due deletion; False to try again next tick (an owner whose dependents
        are not gone yet)."""
        if key[0] == "namespace":
            self.namespaces.pop(key[1], None)
            return True
        if key[0] == "object":
            where = (key[1], key[2], key[3])
            obj = self.objects.get(where)
            if obj is not None and self._dependents(key[2], obj):
                return False
            self.objects.pop(where, None)
            return True
        ns, name = key[1], key[2]
        if key[0] == "pod":  # the kubelet has stopped it: gone, its StatefulSet recreates it
            old = self.pods.pop((ns, name), None)
            owner = self._live_owner(ns, old) if old is not None else None
        else:  # "recreate": the StatefulSet controller's turn after a force delete
            owner = next((o for (_, n, _), o in self.objects.items()
                          if n == ns and o["kind"] == "StatefulSet"
                          and name.rsplit("-", 1)[0] == o["metadata"]["name"]
                          and not o["metadata"].get("deletionTimestamp")), None)
        if owner is not None and owner["kind"] == "StatefulSet" and (ns, name) not in self.pods:
            self._statefulset_pod(ns, owner, int(name.rsplit("-", 1)[1]))
        return True
