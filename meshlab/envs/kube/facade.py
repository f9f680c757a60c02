"""The cluster facade's contract: :class:`ClusterApi`, what the kube env asks of a cluster.

Two implementations: :class:`meshlab.envs.kube.api.KubeApi` (the official ``kubernetes``
client) and :class:`meshlab.envs.kube.dry_run.DryRunApi` (prints, sends nothing). Objects are
plain JSON-shaped dicts (camelCase keys, as ``kubectl get -o json`` prints them). Also here: the
kinds the facade applies with typed client calls, and the ``kubectl`` spelling of an exec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meshlab.envs.base import CommandResult

#: ``(apiVersion, kind)`` → (client class, method suffix) for the typed kinds the lab applies.
TYPED_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "Service"): ("CoreV1Api", "namespaced_service"),
    ("v1", "ConfigMap"): ("CoreV1Api", "namespaced_config_map"),
    ("v1", "ServiceAccount"): ("CoreV1Api", "namespaced_service_account"),
    ("apps/v1", "StatefulSet"): ("AppsV1Api", "namespaced_stateful_set"),
    ("apps/v1", "Deployment"): ("AppsV1Api", "namespaced_deployment"),
    ("batch/v1", "Job"): ("BatchV1Api", "namespaced_job"),  # load workers (meshlab.load.kube_jobs)
}
#: Plurals of custom kinds that do not follow "lowercase + s" (Chaos Mesh's CRDs name their
#: plural as the lowercase kind).
_PLURALS = {"Telemetry": "telemetries", "DNSChaos": "dnschaos"}


def custom_plural(kind: str) -> str:
    """The REST plural of a custom kind (``DestinationRule`` → ``destinationrules``)."""
    return _PLURALS.get(kind, kind.lower() + "s")


def kubectl_exec_argv(namespace: str, pod: str, container: str, argv: list[str]) -> list[str]:
    """The ``kubectl exec`` line equivalent to an exec call (journals, errors, dry-run)."""
    return ["kubectl", "exec", "-n", namespace, pod, "-c", container, "--", *argv]


class ClusterApi(Protocol):
    """What the kube env asks of a cluster (:class:`KubeApi`, or the dry-run facade)."""

    dry_run: bool
    server: str

    def announce(self, line: str) -> None: ...
    def read_namespace(self, name: str) -> dict[str, Any] | None: ...
    def create_namespace(self, name: str, labels: dict[str, str]) -> None: ...
    def delete_namespace(self, name: str) -> bool: ...
    def patch_namespace_labels(self, name: str, labels: dict[str, str | None]) -> None: ...
    def delete_labelled(self, namespace: str, api_version: str, kind: str,
                        selector: str) -> list[str]: ...
    def apply(self, namespace: str, body: dict[str, Any]) -> str: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...
    def list_pods(self, namespace: str) -> list[dict[str, Any]]: ...
    def read_pod(self, namespace: str, name: str) -> dict[str, Any]: ...
    def delete_pod(self, namespace: str, name: str, grace_s: float) -> None: ...
    def resize_pod(self, namespace: str, name: str, container: str,
                   limits: dict[str, str | None]) -> None: ...
    def list_services(self, namespace: str) -> list[dict[str, Any]]: ...
    def list_events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]: ...
    def pod_log(self, namespace: str, pod: str, container: str) -> str: ...
    def add_ephemeral_container(self, namespace: str, pod: str,
                                container: dict[str, Any]) -> None: ...
    def exec(self, namespace: str, pod: str, container: str, argv: list[str], *,
             timeout_s: float, input_text: str | None = None) -> CommandResult: ...
    def exec_stream(self, namespace: str, pod: str, container: str, argv: list[str]) -> Any: ...
    def port_forward_http(self, namespace: str, pod: str, port: int, method: str, path: str, *,
                          timeout_s: float) -> tuple[int, str]: ...


@dataclass(frozen=True)
class JobPlacement:
    """Where a distributed load's worker Jobs go (:meth:`KubeEnv.job_placement`), checked
    against the guardrails before any Job is created.

    Attributes:
        api: the cluster facade the Jobs are applied through (a dry run prints them).
        settings: the kube settings (:class:`~meshlab.envs.kube.settings.KubeSettings`).
        lab: the lab name (the Jobs' label).
        client: the client pod object as the API returns it (image, node, tolerations).
        poll_s: seconds between polls of the workers' pods.
    """

    api: ClusterApi
    settings: Any
    lab: str
    client: dict[str, Any]
    poll_s: float
