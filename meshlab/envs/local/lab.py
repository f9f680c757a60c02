"""``LocalEnv``: the layered lab on real Linux network namespaces (the embedded default env).

``up`` validates everything first (manifests, images, names, bridge netfilter) so a bad input
builds nothing; then it cleans what a dead lab of the same name left, builds the network,
starts the pods, waits until every port listens and starts the lab's kubelet loop
(:mod:`~meshlab.envs.local.kubelet_daemon`). Any failure during ``up`` tears down what was built.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshlab.envs.base import PodInfo
from meshlab.envs.local import istio_push, kubelet, kubelet_daemon
from meshlab.envs.local.containers import LocalContainers, container_names
from meshlab.envs.local.dns_env import ClusterDnsMixin
from meshlab.envs.local.doctor import bridge_netfilter_error
from meshlab.envs.local.images import local_command
from meshlab.envs.local.netns import NetnsShell
from meshlab.envs.local.network import build_network
from meshlab.envs.local.node_power import LocalNodeDriver
from meshlab.envs.local.plan import LabPlan, make_plan
from meshlab.envs.local.pod_lifecycle import PodLifecycleMixin
from meshlab.envs.local.pod_status import lab_status
from meshlab.envs.local.state import LabState, cleanup, leftovers, locked_state
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS
from meshlab.envs.route_faults import wait_applied
from meshlab.errors import ConfigError, LabError
from meshlab.manifests.loader import load_topology

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.envs.prometheus_api import PrometheusClient

__all__ = ["DEFAULT_MANIFESTS", "LocalEnv"]


class LocalEnv(ClusterDnsMixin, PodLifecycleMixin):
    """The local env (implements :class:`meshlab.envs.base.Env`).

    Args:
        manifests: folder of Kubernetes YAML plus a ``LabCluster``, or a list of folders
            (base, then overlays; see :mod:`meshlab.envs.manifest_sets`).
        lab: short lab name (1-8 lowercase letters/digits); namespaces are ``ml-<lab>-…``.
        ready_timeout_s: how long ``up`` waits for every pod to listen.

    Raises:
        ManifestError: on construction, for any manifest problem (nothing is built).
    """

    name = "local"
    #: The collectors read sockets and conntrack over netlink sockets opened inside the lab's
    #: namespaces (:func:`meshlab.collectors.sampler.kernel_readers`, :meth:`netns_of`).
    kernel_reads = "netlink"
    #: meshlab's sidecar has Envoy's tcp_stats transport socket (docs/SIDECAR.md)
    sidecar_has_tcp_stats = True

    def __init__(self, manifests: Path | str | Sequence[Path | str] = DEFAULT_MANIFESTS,
                 lab: str = "lab", ready_timeout_s: float = 30.0) -> None:
        folders = [manifests] if isinstance(manifests, (str, Path)) else list(manifests)
        self.manifest_set: tuple[Path, ...] = tuple(Path(f) for f in folders)
        self.manifests = self.manifest_set[0] if self.manifest_set else Path()
        self.topology = load_topology(self.manifest_set)
        self.plan: LabPlan = make_plan(self.topology, lab)
        for pp in self.plan.pods.values():  # reject unsupported images before building
            for i, c in enumerate(pp.pod.workload.containers):
                local_command(pp.pod.workload, i, c)
        self.lab = lab
        self.ready_timeout_s = ready_timeout_s
        self.state = LabState.load(lab) or LabState(lab=lab, manifests=self._manifest_strs())

    def __repr__(self) -> str:
        return (f"LocalEnv(lab={self.lab!r}, status={self.state.status!r}, "
                f"pods={len(self.plan.pods)}, manifests={self._manifest_strs()!r})")

    def _manifest_strs(self) -> list[str]:
        return [str(p) for p in self.manifest_set]

    def spec(self) -> dict[str, Any]:
        """What rebuilds this env object elsewhere (:func:`meshlab.envs.factory.env_from_spec`):
        ``{"env": "local", "lab": str, "manifests": [folder, ...]}``."""
        return {"env": self.name, "lab": self.lab, "manifests": self._manifest_strs()}

    # lifecycle -------------------------------------------------------------------------
    def up(self) -> None:
        """Build the lab and start every pod; tear down and re-raise on any failure.

        Raises:
            LabError: bridge netfilter is missing (nothing built; ``meshlab doctor`` lists
                what else is), a command failed or a pod did not become ready.
        """
        missing = bridge_netfilter_error()  # before anything is built
        if missing:
            raise LabError(missing)
        cleanup(self.lab)
        self.state = LabState(lab=self.lab, manifests=self._manifest_strs())
        self.state.save()
        try:
            build_network(self.plan, self.state)
            kubelet.start_pods(self.plan, self.state, list(self.plan.pods.values()),
                               self.ready_timeout_s)
            self.state.status = "up"
            self.state.save()
            kubelet_daemon.start(self.state)  # restarts from now on (it runs while "up")
        except BaseException:
            cleanup(self.lab)
            self.state.status = "down"
            raise

    def down(self) -> list[str]:
        """Remove everything of this lab (idempotent; a dead runner's faults are reverted first by
        :func:`meshlab.experiment.labs.lab_down`).

        Returns:
            The namespaces removed.
        """
        removed = cleanup(self.lab)
        self.state = LabState(lab=self.lab, status="down", manifests=self._manifest_strs())
        return removed

    def start_prometheus(self, scrape_interval_s: float | None = None) -> str:
        """Start the lab's Prometheus server unless it runs, and wait until ``/-/ready`` and
        every target has been scraped once (:mod:`meshlab.envs.local.prometheus`; the file
        SD's 5 s update period plus up to one scrape interval).

        Args:
            scrape_interval_s: seconds between scrapes (None: the module's default, 5 s).

        Returns:
            Its URL (reachable from the lab's cluster netns; query with :meth:`prometheus`).

        Raises:
            LabError: the lab is not up, or the server did not become ready (it is stopped).
        """
        from meshlab.envs.local import prometheus as server

        pid = server.start(self.plan, scrape_interval_s or server.SCRAPE_INTERVAL_S)
        client = self.prometheus()
        try:
            server.wait_ready(self.plan, pid, client)
        except LabError:
            server.stop(self.lab)
            raise
        finally:
            client.close()
            self.state = LabState.load(self.lab) or self.state
        return server.server_url(self.plan)

    def stop_prometheus(self) -> bool:
        """Stop the lab's Prometheus and delete its data (idempotent; ``down`` does it too).

        Returns:
            True when a running server was stopped.
        """
        from meshlab.envs.local import prometheus as server

        stopped = server.stop(self.lab)
        self.state = LabState.load(self.lab) or self.state
        return stopped

    def prometheus_configured(self) -> bool:
        """Always: the lab starts its own Prometheus (:meth:`start_prometheus`)."""
        return True

    def prometheus(self) -> PrometheusClient:
        """A client for the lab's Prometheus (its calls run in the cluster netns), told the
        server's scrape interval."""
        from meshlab.envs.local import prometheus as server
        from meshlab.envs.local.netns_socket import netns_runner
        from meshlab.envs.prometheus_api import DEFAULT_TIMEOUT_S, PrometheusClient

        netns = self.plan.cluster_netns
        return PrometheusClient(server.server_url(self.plan), where=f"netns {netns}",
                                runner=netns_runner(netns, DEFAULT_TIMEOUT_S + 5),
                                scrape_interval_s=server.configured_interval_s(self.lab)
                                or server.SCRAPE_INTERVAL_S)

    def fingerprint(self) -> dict[str, Any]:
        """Rules, sysctls, processes, namespaces and active faults of the lab now
        (:mod:`meshlab.envs.local.fingerprint`; compare two with its ``diff``)."""
        from meshlab.envs.ledger import entries
        from meshlab.envs.local.fingerprint import fingerprint

        return fingerprint(self.lab, [e.path.stem for e in entries(self.name, self.lab)])

    def status(self) -> dict[str, Any]:
        """The lab as found on the machine now: ``{"lab", "status", "netns": [...], "pids":
        {...}, "containers": {"<pod>/<container>": {"restarts", "state", ...}}, "not_ready":
        [...]}`` (:func:`~meshlab.envs.local.pod_status.lab_status`)."""
        return lab_status(LabState.load(self.lab), self.lab, leftovers(self.lab))

    # lookups ---------------------------------------------------------------------------
    def pods(self) -> list[PodInfo]:
        """Every pod of the lab, in schedule order."""
        return [PodInfo(name=pp.name, namespace=pp.pod.namespace, workload=pp.pod.workload.name,
                        node=pp.node.name, ip=pp.ip, meshed=pp.pod.meshed,
                        labels=dict(pp.pod.labels)) for pp in self.plan.pods.values()]

    def pod(self, name: str) -> PodInfo:
        """A pod by pod name (``fortio-server-0``) or workload name (first replica).

        Raises:
            ConfigError: no such pod.
        """
        for info in self.pods():
            if name in (info.name, info.workload):
                return info
        raise ConfigError(f"no pod or workload named {name!r} in the lab "
                          f"(pods: {', '.join(p.name for p in self.pods())})")

    def pod_shell(self, pod: str) -> NetnsShell:
        """Shell in the pod's network namespace (as the pod's processes see it)."""
        info = self.pod(pod)
        return NetnsShell(self.plan.pods[info.name].netns, info.name)

    def node_shell(self, node: str) -> NetnsShell:
        """Shell in a node's network namespace.

        Raises:
            ConfigError: no such node.
        """
        if node not in self.plan.nodes:
            raise ConfigError(f"no node named {node!r} (nodes: {', '.join(self.plan.nodes)})")
        return NetnsShell(self.plan.nodes[node].netns, node)

    def netns_of(self, kind: str, name: str) -> str:
        """The network namespace of a pod (``kind="pod"``, pod or workload name) or a node
        (``kind="node"``), e.g. ``ml-lab-p-netshoot-0`` / ``ml-lab-n0``.

        Raises:
            ConfigError: no such pod or node, or another ``kind``.
        """
        if kind == "pod":
            return self.plan.pods[self.pod(name).name].netns
        if kind == "node":
            return self.node_shell(name).netns
        raise ConfigError(f"netns_of: kind must be 'pod' or 'node', got {kind!r}")

    def node_driver(self) -> LocalNodeDriver:
        """This lab's :class:`~meshlab.envs.node_driver.NodeDriver` (node power-off / power-on,
        :mod:`meshlab.envs.local.node_power`)."""
        return LocalNodeDriver(self)

    def sidecar_admin(self, pod: str, path: str, *, method: str = "GET",
                      port: int = 15000) -> str:
        """Call the pod's sidecar admin API at ``127.0.0.1:<port><path>`` (as
        ``kubectl exec -c istio-proxy -- curl`` would) and return the body.

        Raises:
            ConfigError: the pod has no sidecar.
            LabError: the admin endpoint did not answer.
        """
        info = self.pod(pod)
        if not info.meshed:
            raise ConfigError(f"pod {info.name} has no sidecar")
        res = self.pod_shell(info.name).run(
            ["curl", "-sS", "-m", "5", "-X", method, f"http://127.0.0.1:{port}{path}"],
            check=False, timeout_s=10)
        if res.returncode != 0:
            raise LabError(f"sidecar admin {path} on {info.name} failed: {res.stderr.strip()}")
        return res.stdout

    # containers (the Containers capability, envs/local/containers.py) -----------------------
    def _containers(self) -> LocalContainers:  # fresh state: the kubelet restarts containers
        return LocalContainers(LabState.load(self.lab) or self.state, kubelet.cgroups())

    def containers(self, pod: str) -> list[str]:
        """The pod's running containers (``istio-proxy`` included)."""
        return container_names(self.state, self.pod(pod).name)

    def pause_container(self, pod: str, container: str) -> str:
        """Freeze the container (:meth:`LocalContainers.pause`)."""
        return self._containers().pause(self.pod(pod).name, container)

    def resume_container(self, pod: str, container: str) -> str:
        """Thaw the container (idempotent)."""
        return self._containers().resume(self.pod(pod).name, container)

    def container_paused(self, pod: str, container: str) -> bool:
        """Whether the container is frozen now."""
        return self._containers().paused(self.pod(pod).name, container)

    def container_cpu_limit(self, pod: str, container: str) -> int | None:
        """The container's CPU limit in millicores (None: unlimited)."""
        return self._containers().cpu_limit(self.pod(pod).name, container)

    def set_container_cpu_limit(self, pod: str, container: str, millicores: int | None) -> str:
        """Change the container's CFS quota live."""
        return self._containers().set_cpu_limit(self.pod(pod).name, container, millicores)

    def container_usage(self, pod: str) -> dict[str, dict[str, Any]]:
        """CPU/throttling counters and memory of each container of the pod."""
        return self._containers().usage(self.pod(pod).name)

    def run_in_container(self, pod: str, container: str, argv: list[str], log_name: str) -> int:
        """Start ``argv`` detached in the container's cgroup and the pod's netns (as ``kubectl
        exec`` would, without waiting); output goes to ``<pod dir>/<log_name>.log``.

        Raises:
            ConfigError: no such pod or container. LabError: no cgroups, or it did not start.
        """
        name = self.pod(pod).name
        groups = self._containers().need_groups("run in container")
        rel = self._containers().rel(name, container)
        log = kubelet.pod_dir(self.state, name) / f"{log_name}.log"
        return self.pod_shell(name).popen(argv, stdout=log, stderr=log,
                                          wrap=lambda a: groups.enter_argv(rel, a)).pid

    # route faults (the RouteFaults capability, envs/local/istio_push.py) --------------------
    def _fqdn(self, host: str) -> str:
        topo = self.plan.topology
        for svc in topo.services:
            fqdn = svc.fqdn(topo.cluster.cluster_domain)
            if host in (svc.name, fqdn):
                return fqdn
        raise ConfigError(f"host: no Service named {host!r} (services: "
                          f"{', '.join(s.name for s in topo.services)})")

    def set_route_fault(self, host: str, port: int | None, *, abort_status: int | None,
                        abort_pct: float, delay_s: float | None, delay_pct: float) -> str:
        """Push a VirtualService fault on ``host``'s routes to every sidecar and wait until
        each has it.

        Raises:
            ConfigError: no such Service. LabError: a sidecar did not apply it in time.
        """
        fqdn = self._fqdn(host)
        with locked_state(self.lab) as state:  # another process may push too
            self.state = state or self.state
            self.state.route_faults[istio_push.fault_key(fqdn, port)] = {
                "abort_status": abort_status, "abort_pct": abort_pct, "delay_s": delay_s,
                "delay_pct": delay_pct}
            self.state.save()
            pods = istio_push.write_configs(self.plan, self.state, kubelet.pod_dir)
        wait_applied(self.sidecar_admin, pods, fqdn, port, present=True)
        return f"pushed a fault on {fqdn}{f':{port}' if port else ''} to {', '.join(pods)}"

    def clear_route_fault(self, host: str, port: int | None) -> str:
        """Push ``host``'s routes without the fault again (idempotent)."""
        fqdn = self._fqdn(host)
        with locked_state(self.lab) as state:  # the deadman may revert it
            self.state = state or self.state
            if self.state.route_faults.pop(istio_push.fault_key(fqdn, port), None) is None:
                return f"no fault pushed on {fqdn}"
            self.state.save()
            pods = istio_push.write_configs(self.plan, self.state, kubelet.pod_dir)
        wait_applied(self.sidecar_admin, pods, fqdn, port, present=False)
        return f"pushed {fqdn}'s routes without the fault to {', '.join(pods)}"

    def pod_log_dir(self, pod: str) -> Path:
        """Folder holding the pod's container logs and access log."""
        return kubelet.pod_dir(self.state, self.pod(pod).name)

    def access_log_lines(self, pod: str) -> list[str]:
        """The pod sidecar's access-log lines so far (as ``kubectl logs -c istio-proxy``).

        Raises:
            ConfigError: the pod has no sidecar.
        """
        info = self.pod(pod)
        if not info.meshed:
            raise ConfigError(f"pod {info.name} has no sidecar")
        path = self.pod_log_dir(info.name) / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def describe(self) -> dict[str, Any]:
        """Topology and environment facts for the run journal (CONTRACTS.md §3)."""
        plan = self.plan
        return {
            "env": {"name": self.name, "lab": self.lab, "kernel": platform.release(),
                    "manifests": self._manifest_strs(), "sysctls": dict(self.state.sysctls)},
            "topology": {
                "nodes": [{"name": n.name, "ip": n.ip, "pod_cidr": n.pod_cidr, "netns": n.netns}
                          for n in plan.nodes.values()],
                "pods": [{"name": p.name, "namespace": p.namespace, "node": p.node, "ip": p.ip,
                          "meshed": p.meshed, "workload": p.workload} for p in self.pods()],
                "services": [{"name": s.name, "namespace": s.namespace,
                              "cluster_ip": plan.cluster_ip(s),
                              "ports": [{"port": sp.port, "name": sp.name,
                                         "protocol": sp.protocol} for sp in s.ports]}
                             for s in self.topology.services]},
        }
