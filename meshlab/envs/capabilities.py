"""The optional capabilities an env may have beyond :class:`~meshlab.envs.base.Env`: each a
runtime-checkable Protocol that a fault, collector or reading tests with ``isinstance`` before it
uses it (the local lab has most; a cluster has those it can do through the API), so a suite that
needs one on an env without it gets a clear refusal instead of an AttributeError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LocalNamespaces(Protocol):
    """Capability of an env whose network namespaces are on this machine (the local lab), so
    collectors can open netlink sockets inside them."""

    def netns_of(self, kind: str, name: str) -> str:
        """The network namespace of a ``pod`` or ``node`` by name."""
        ...


@runtime_checkable
class Containers(Protocol):
    """Capability of an env that acts on one container of a pod (the local lab: its container
    cgroups): pause, live CPU limit, CPU/memory use. Container names are the manifest's, plus
    ``istio-proxy`` for the sidecar."""

    def containers(self, pod: str) -> list[str]:
        """The pod's running containers."""
        ...

    def pause_container(self, pod: str, container: str) -> str:
        """Freeze every process of the container (sockets stay open); returns what was done."""
        ...

    def resume_container(self, pod: str, container: str) -> str:
        """Undo :meth:`pause_container` (idempotent)."""
        ...

    def container_paused(self, pod: str, container: str) -> bool:
        """Whether the container is paused now."""
        ...

    def container_cpu_limit(self, pod: str, container: str) -> int | None:
        """The container's CPU limit in millicores (None: unlimited)."""
        ...

    def set_container_cpu_limit(self, pod: str, container: str, millicores: int | None) -> str:
        """Change the container's CPU limit live (None lifts it); returns what was done."""
        ...

    def container_usage(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {cpu_usage_us, nr_periods, nr_throttled, throttled_us, memory_bytes,
        cpu_limit_m}}``: cumulative CPU use and CFS throttling, memory now."""
        ...

    def run_in_container(self, pod: str, container: str, argv: list[str], log_name: str) -> int:
        """Start ``argv`` detached inside the container (its cgroup and the pod's network
        namespace), output appended to the pod's ``<log_name>.log``; returns its PID."""
        ...


@runtime_checkable
class ClusterDns(Protocol):
    """Capability of an env with a cluster DNS it can count and fault (the local lab's
    dnsmasq at the kube-dns ClusterIP, :mod:`meshlab.envs.local.kube_dns`)."""

    def dns_query_counts(self) -> dict[str, int]:
        """``{pod: DNS queries it sent to kube-dns since up}``."""
        ...

    def set_dns_fault(self, fault_id: str, patterns: list[str], action: str,
                      percent: float) -> str:
        """kube-dns answers ``action`` (``nxdomain``/``servfail``/``timeout``) for ``percent``
        % of the queries matching a glob of ``patterns``; returns what was done."""
        ...

    def clear_dns_fault(self, fault_id: str) -> str:
        """Undo :meth:`set_dns_fault` (idempotent)."""
        ...


@runtime_checkable
class ShellBurners(Protocol):
    """Capability of an env whose containers lack meshlab's Python (a cluster): the
    ``cpu-stress`` burner is a shell loop there, and waits on it are skipped in a dry run."""

    dry_run: bool

    def burner_argv(self, load_pct: float, burner_id: str) -> list[str]:
        """One burner's command line: busy ``load_pct`` % of one CPU, its command line ending
        in ``meshlab.faults.cpu_burner --load-pct <p> --id <burner_id>`` (found by ``pgrep``)."""
        ...


@runtime_checkable
class PodLifecycle(Protocol):
    """Capability of an env whose kubelet restarts containers and recreates deleted pods (the
    local lab's kubelet loop; a cluster's kubelet and StatefulSet controller)."""

    def kill_pod(self, pod: str, container: str | None, grace_s: float) -> str:
        """Kill one container (its kubelet restarts it) or, with ``container`` None, delete
        the whole pod (recreated with the same name): SIGTERM and ``grace_s`` seconds before
        SIGKILL (0: SIGKILL at once). Returns what was done."""
        ...

    def container_statuses(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {"restarts", "state", "reason"?, "last_exit"?}}`` now."""
        ...

    def wait_pod_ready(self, pod: str, timeout_s: float) -> float:
        """Poll until every container of the pod runs and it is back in its Services'
        endpoints; returns the seconds waited. Raises LabError after ``timeout_s``."""
        ...


@runtime_checkable
class RouteFaults(Protocol):
    """Capability of an env that pushes VirtualService HTTP faults to the running sidecars
    live, as istiod does (no restart; open connections get it at their next request)."""

    def set_route_fault(self, host: str, port: int | None, *, abort_status: int | None,
                        abort_pct: float, delay_s: float | None, delay_pct: float) -> str:
        """Put a ``fault`` on the routes to Service ``host`` (name or FQDN; ``port`` None:
        every port) and return once every sidecar has it; returns what was done."""
        ...

    def clear_route_fault(self, host: str, port: int | None) -> str:
        """Take that fault off again (idempotent) and return once every sidecar has the
        route without it."""
        ...


@runtime_checkable
class PodLogFiles(Protocol):
    """Capability of an env whose pods' log files are on this machine (the local lab)."""

    def pod_log_dir(self, pod: str) -> Path:
        """The folder holding the pod's container logs and sidecar access log."""
        ...


@runtime_checkable
class Fingerprinting(Protocol):
    """Capability of an env that can list everything a run may leave behind (rules, sysctls,
    processes, namespaces, active faults), to compare before and after a test."""

    def fingerprint(self) -> dict[str, Any]:
        """The lab's state now (compare two with :func:`meshlab.envs.local.fingerprint.diff`)."""
        ...


@runtime_checkable
class FreshPods(Protocol):
    """Capability of an env that can give a running lab fresh pods (``kubectl rollout
    restart`` of everything: new processes, no connection, pool, outlier or restart state
    kept), so runs that share a lab start alike without rebuilding it."""

    def restart_pods(self) -> str:
        """Replace every pod's processes and wait until all are ready; returns what was done."""
        ...


@runtime_checkable
class ManagedPrometheus(Protocol):
    """Capability of an env that runs its own Prometheus (the local lab; a cluster has one)."""

    def start_prometheus(self, scrape_interval_s: float | None = None) -> str:
        """Start (idempotent) the lab's Prometheus; returns its URL."""
        ...


@runtime_checkable
class LoadJobs(Protocol):
    """Capability of an env that runs load generators as its own jobs (Kubernetes Jobs; the
    load layer's :func:`meshlab.load.kube_jobs.run_load_jobs` runs them)."""

    def job_placement(self, client: str, workers: int, what: str) -> Any:
        """Where ``workers`` worker jobs beside pod ``client`` go, after the guardrails
        (a :class:`~meshlab.envs.kube.facade.JobPlacement`)."""
        ...
