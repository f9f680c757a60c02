"""``KubeEnv``: the same manifests and suites on a real cluster with Istio (DESIGN.md §4).

``up`` asks the guardrails first (namespace allow-list, lab size, node opt-in label:
:mod:`meshlab.envs.kube.guardrails`), before any mutating request; then it removes what a dead
lab left in the namespace (only a namespace meshlab created), creates the namespace labelled
for meshlab and Istio injection, applies the manifests (:mod:`meshlab.envs.kube.objects`) and
waits until every pod is Ready (:mod:`meshlab.envs.kube.ready`); a failure deletes the
namespace again. Commands run through pod exec (:mod:`meshlab.envs.kube.shells`), the sidecar
admin API through a port-forward to 15000, node commands and node faults over SSH. With
``settings.dry_run`` nothing is sent: :mod:`meshlab.envs.kube.dry_run` prints it all. A
namespace labelled ``meshlab.io/keep-namespace=true`` (the nightly runner's) is swept instead
of deleted (:mod:`meshlab.envs.kube.namespace`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from meshlab.envs.base import PodInfo
from meshlab.envs.kube.api import KubeApi, api_client
from meshlab.envs.kube.containers import KubeContainers
from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.envs.kube.facade import ClusterApi, JobPlacement
from meshlab.envs.kube.guardrails import check_lab_size, check_namespace, check_nodes
from meshlab.envs.kube.namespace import LabNamespace
from meshlab.envs.kube.node_access import KubeNodeAccess
from meshlab.envs.kube.nodes import GuardedNodeDriver, NodeNames, describe_nodes
from meshlab.envs.kube.objects import lab_objects
from meshlab.envs.kube.pod_lifecycle import KubePodLifecycle
from meshlab.envs.kube.ready import lab_pods, wait_ready, workload_of
from meshlab.envs.kube.route_faults import KubeRouteFaults
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.kube.shells import (
    SIDECAR,
    DebugContainers,
    KubePodShell,
    app_container,
)
from meshlab.envs.manifest_sets import MANIFESTS_ROOT
from meshlab.errors import ConfigError, LabError, MeshlabError
from meshlab.manifests.loader import load_topology

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.envs.prometheus_api import PrometheusClient
    from meshlab.envs.ssh import SshNodeDriver

ADMIN_TIMEOUT_S = 10.0
#: Objects only a cluster needs (docs/KUBE.md), applied after the lab's folders.
CLUSTER_MANIFESTS = MANIFESTS_ROOT / "cluster"


def is_access_json(line: str) -> bool:
    """A line of Istio's JSON access log (``{...}`` with ``start_time`` or ``response_code``),
    not a pilot-agent/Envoy log line."""
    text = line.strip()
    if not text.startswith("{"):
        return False
    try:
        rec = json.loads(text)
    except ValueError:
        return False
    return isinstance(rec, dict) and ("start_time" in rec or "response_code" in rec)


class KubeEnv(KubePodLifecycle, KubeRouteFaults, KubeContainers, KubeNodeAccess):
    """The kube env (implements :class:`meshlab.envs.base.Env`).

    Args:
        manifests: folders of Kubernetes YAML plus a ``LabCluster`` (base, then overlays).
        settings: the :class:`KubeSettings` (namespace, guardrails, SSH, Prometheus, dry-run).
        lab: short lab name (1-8 lowercase letters/digits), the ``meshlab.io/lab`` label.
        api: the cluster facade (default: :class:`DryRunApi` when ``settings.dry_run``, else a
            :class:`KubeApi` from the settings' kubeconfig, made on first use).
        poll_s: seconds between readiness / deletion polls.
        cluster_manifests: folder of cluster-only objects applied after the lab's folders
            (default ``manifests/cluster/``; None: none).
        out: where a dry run prints (default: standard output).

    Raises:
        ManifestError / ConfigError: on construction, before anything is sent.
    """

    name = "kube"
    #: Stock istio-proxy has no tcp_stats transport socket: tcp_stats reads fall back to ``ss``
    #: in the pod netns (:mod:`meshlab.collectors.tcp_stats_ss`) and runs note it.
    sidecar_has_tcp_stats = False
    #: No lab namespace is on this machine: the collectors run ``ss`` / ``conntrack -L``
    #: through the env's shells (:func:`meshlab.collectors.sampler.kernel_readers`).
    kernel_reads = "shell"

    def __init__(self, manifests: Sequence[Path | str] | Path | str, settings: KubeSettings,
                 lab: str = "lab", api: ClusterApi | None = None, *, poll_s: float = 1.0,
                 cluster_manifests: Path | str | None = CLUSTER_MANIFESTS,
                 out: TextIO | None = None) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,8}", lab):
            raise ConfigError(f"lab name {lab!r}: use 1-8 lowercase letters or digits")
        folders = [manifests] if isinstance(manifests, str | Path) else list(manifests)
        self.manifest_set: tuple[Path, ...] = tuple(Path(f) for f in folders)
        self.topology = load_topology(self.manifest_set)
        self.settings, self.lab, self.poll_s = settings, lab, poll_s
        names = [w.name for w in self.topology.workloads]
        if len(set(names)) != len(names):
            raise ConfigError(f"manifests: workload names must be unique in the lab namespace "
                              f"{settings.namespace} (got {names})")
        self.expected = {w.name: w.replicas for w in self.topology.workloads}
        self.cluster_manifests = Path(cluster_manifests) if cluster_manifests else None
        self.namespace_labels, self.objects = lab_objects(
            self.manifest_set, self.topology, settings, lab, self.cluster_manifests)
        self.names = NodeNames(settings, [n.name for n in self.topology.cluster.nodes])
        self._api, self._out = api, out
        self._debug: DebugContainers | None = None
        self._replaced: dict[str, tuple[str, frozenset[str]]] = {}
        self._ssh: SshNodeDriver | None = None
        self._driver: GuardedNodeDriver | None = None

    def __repr__(self) -> str:
        return (f"KubeEnv(lab={self.lab!r}, namespace={self.settings.namespace!r}, "
                f"dry_run={self.settings.dry_run}, objects={len(self.objects)})")

    @property
    def api(self) -> ClusterApi:
        """The cluster facade (made on first use)."""
        if self._api is None:
            self._api = DryRunApi(self._out) if self.settings.dry_run else KubeApi(
                api_client(self.settings.kubeconfig, self.settings.context), self.poll_s,
                self.settings.ready_timeout_s)
        return self._api

    @property
    def namespace(self) -> str:
        """The lab's namespace."""
        return self.settings.namespace

    def spec(self) -> dict[str, Any]:
        """What rebuilds this env elsewhere (:func:`meshlab.envs.factory.env_from_spec`):
        ``{"env": "kube", "lab", "manifests": [folder, ...], "cluster_manifests", "settings"}``."""
        return {"env": self.name, "lab": self.lab,
                "manifests": [str(p) for p in self.manifest_set],
                "cluster_manifests": str(self.cluster_manifests or "") or None,
                "settings": self.settings.to_dict()}

    # lifecycle -------------------------------------------------------------------------
    def up(self) -> None:
        """Check the guardrails, (re)create the namespace, apply the manifests, wait Ready.

        Raises:
            GuardrailError: refused before any mutating request (says what to change).
            LabError: a request failed or a pod was not Ready in ``ready_timeout_s`` (the pod
                and the reason are named); the namespace is deleted again.
        """
        s, api = self.settings, self.api
        check_namespace(s)
        planned = self.topology.pods()
        check_lab_size(s, len(planned))
        nodes = sorted({s.cluster_node(p.node) for p in planned})
        if api.dry_run:
            api.announce(f"node check skipped (dry run): nodes {nodes} must carry "
                         f"{s.node_label} (kubectl get nodes -l {s.node_label})")
        else:
            check_nodes(s, self._node_labels(), nodes, "the lab's pods")
        self._lab_namespace().prepare(self.namespace_labels)
        try:
            for obj in self.objects:
                api.apply(self.namespace, obj)
            api.announce(f"kubectl wait -n {self.namespace} --for=condition=Ready pod --all "
                         f"--timeout={s.ready_timeout_s:g}s")
            wait_ready(api, self.namespace, self.expected, s.ready_timeout_s, self.poll_s)
        except BaseException:
            try:
                self._lab_namespace().remove()
            except MeshlabError:
                pass  # the first error is the one to report
            raise

    def down(self) -> list[str]:
        """Delete the lab namespace and wait until it is gone (a kept
        namespace: delete the lab's objects and wait until their pods are gone).

        Returns:
            The namespace removed (or swept), or none when there was none.

        Raises:
            GuardrailError: the namespace is not allowed, or exists but is not this lab's.
        """
        check_namespace(self.settings)
        if self._driver is not None:
            self._driver.close()
        self._debug = self._driver = self._ssh = None
        if self.api.dry_run:
            self.api.delete_namespace(self.namespace)
            return [self.namespace]
        return [self.namespace] if self._lab_namespace().remove() else []

    def _lab_namespace(self) -> LabNamespace:
        kinds = [(str(o.get("apiVersion")), str(o.get("kind"))) for o in self.objects]
        return LabNamespace(self.api, self.settings, self.lab, kinds, self.poll_s)

    def status(self) -> dict[str, Any]:
        """``{"lab", "env", "namespace", "status": "up"|"down", "pods": {name: phase}}``."""
        up = self.api.read_namespace(self.namespace) is not None
        pods = lab_pods(self.api, self.namespace, self.expected) if up else []
        return {"lab": self.lab, "env": self.name, "namespace": self.namespace,
                "status": "up" if up else "down",
                "pods": {p["metadata"]["name"]: (p.get("status") or {}).get("phase")
                         for p in pods}}

    # lookups ---------------------------------------------------------------------------
    def _pod_objects(self) -> list[dict[str, Any]]:
        order = list(self.expected)
        return sorted(lab_pods(self.api, self.namespace, self.expected),
                      key=lambda p: (order.index(workload_of(p)), p["metadata"]["name"]))

    def _info(self, pod: dict[str, Any]) -> PodInfo:
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        containers = [c["name"] for c in (spec.get("containers") or [])
                      + (spec.get("initContainers") or [])]
        return PodInfo(name=meta["name"], namespace=meta.get("namespace", self.namespace),
                       workload=workload_of(pod), node=self.names.lab(spec.get("nodeName") or ""),
                       ip=(pod.get("status") or {}).get("podIP") or "",
                       meshed=SIDECAR in containers, labels=dict(meta.get("labels") or {}))

    def pods(self) -> list[PodInfo]:
        """The lab's pods as the cluster reports them now (node: the lab node name)."""
        return [self._info(p) for p in self._pod_objects()]

    def _find(self, name: str) -> dict[str, Any]:
        objs = self._pod_objects()
        by_workload: dict[str, list[dict[str, Any]]] = {}
        for p in objs:
            if p["metadata"]["name"] == name:
                return p
            by_workload.setdefault(workload_of(p), []).append(p)
        if name in by_workload:
            return by_workload[name][0]
        workload, _, ordinal = name.rpartition("-")  # a Deployment's stable alias
        if ordinal.isdigit() and int(ordinal) < len(by_workload.get(workload, [])):
            return by_workload[workload][int(ordinal)]
        raise ConfigError(f"no pod or workload named {name!r} in namespace {self.namespace} "
                          f"(pods: {', '.join(p['metadata']['name'] for p in objs) or 'none'})")

    def pod(self, name: str) -> PodInfo:
        """A pod by name, workload name (first replica) or ``<deployment>-<ordinal>``.

        Raises:
            ConfigError: no such pod.
        """
        return self._info(self._find(name))

    def pod_shell(self, pod: str) -> KubePodShell:
        """Exec in the pod: network tools in the debug container, the rest in the app's; the
        load runner with ``settings.runner_python``, its result fetched from the pod."""
        obj = self._find(pod)
        if self._debug is None:
            self._debug = DebugContainers(self.api, self.namespace, self.settings.debug_image,
                                          self.settings.ready_timeout_s, self.poll_s)
        return KubePodShell(self.api, self.namespace, obj["metadata"]["name"],
                            app_container(obj), self._debug, self.settings.runner_python)

    def job_placement(self, client: str, workers: int, what: str) -> JobPlacement:
        """Where ``workers`` load worker Jobs beside pod ``client`` go
        (:mod:`meshlab.load.kube_jobs` runs them).

        Args:
            client: the client pod's name.
            workers: how many worker Jobs (pods) the load adds.
            what: what the workers are for, for error messages (``the workers of load 'x'``).

        Raises:
            GuardrailError: the workers would take the lab past ``max_pods``, or the client's
                node is not opted in.
            LabError: no such pod.
        """
        obj = self._find(client)
        check_lab_size(self.settings, len(self._pod_objects()), workers=workers)
        node = (obj.get("spec") or {}).get("nodeName") or ""
        if node and not self.api.dry_run:
            check_nodes(self.settings, self._node_labels(), [node], what)
        return JobPlacement(self.api, self.settings, self.lab, obj, self.poll_s)

    # sidecar, logs, facts ----------------------------------------------------------------
    def _meshed(self, pod: str) -> PodInfo:
        info = self.pod(pod)
        if not info.meshed:
            raise ConfigError(f"pod {info.name} has no sidecar")
        return info

    def sidecar_admin(self, pod: str, path: str, *, method: str = "GET",
                      port: int = 15000) -> str:
        """Call Envoy's admin API in the pod through a port-forward to ``127.0.0.1:<port>``
        (as ``istioctl`` does) and return the body.

        Raises:
            ConfigError: the pod has no sidecar.
            LabError: the port-forward failed or the admin API answered >= 400.
        """
        info = self._meshed(pod)
        status, body = self.api.port_forward_http(self.namespace, info.name, port, method, path,
                                                  timeout_s=ADMIN_TIMEOUT_S)
        if status >= 400:
            raise LabError(f"sidecar admin {method} {path} on {info.name}: HTTP {status}: "
                           f"{body[:200]}")
        return body

    def access_log_lines(self, pod: str) -> list[str]:
        """The sidecar's JSON access-log lines so far (``kubectl logs -c istio-proxy``, other
        log lines dropped).

        Raises:
            ConfigError: the pod has no sidecar.
        """
        info = self._meshed(pod)
        text = self.api.pod_log(self.namespace, info.name, SIDECAR)
        return [line for line in text.splitlines() if is_access_json(line)]

    def prometheus_configured(self) -> bool:
        """Whether the settings name the cluster's Prometheus (``prometheus_url``)."""
        return self.settings.prometheus_url is not None

    def prometheus(self) -> PrometheusClient:
        """A client for the cluster's Prometheus at ``settings.prometheus_url``.

        Raises:
            ConfigError: ``prometheus_url`` is not set.
        """
        if self.settings.prometheus_url is None:
            raise ConfigError(f"prometheus_url: not set in "
                              f"{self.settings.source or 'the kube settings'}; set it to the "
                              "cluster's Prometheus, e.g. http://prometheus.istio-system:9090")
        from meshlab.envs.prometheus_api import PrometheusClient

        return PrometheusClient(self.settings.prometheus_url)

    def describe(self) -> dict[str, Any]:
        """Topology and environment facts for the run journal (CONTRACTS.md §3); the kernel
        comes from each node's ``nodeInfo``, sysctls are not collected on a cluster."""
        pods = self.pods()
        used = {self.names.cluster(n) for n in self.names.lab_nodes} | {
            self.names.cluster(p.node) for p in pods}
        rows, kernel = describe_nodes(self.api.list_nodes(), self.names, used)
        return {
            "env": {"name": self.name, "lab": self.lab, "namespace": self.namespace,
                    "server": self.api.server, "context": self.settings.context,
                    "kernel": kernel, "manifests": [str(p) for p in self.manifest_set],
                    "sysctls": None, "dry_run": self.api.dry_run},
            "topology": {
                "nodes": rows,
                "pods": [{"name": p.name, "namespace": p.namespace, "node": p.node, "ip": p.ip,
                          "meshed": p.meshed, "workload": p.workload} for p in pods],
                "services": [{"name": s["metadata"]["name"], "namespace": self.namespace,
                              "cluster_ip": (s.get("spec") or {}).get("clusterIP"),
                              "ports": [{"port": sp.get("port"), "name": sp.get("name"),
                                         "protocol": sp.get("protocol")}
                                        for sp in (s.get("spec") or {}).get("ports") or []]}
                             for s in self.api.list_services(self.namespace)]},
        }
