"""The lab namespace's life: created for the lab and deleted after it, or kept and swept.

An interactive run owns its namespace: ``up`` deletes what a dead lab left (only a namespace
meshlab created for the same lab, :func:`~meshlab.envs.kube.guardrails.check_namespace_owner`)
and creates it labelled; ``down`` deletes it and waits until it is gone.

A namespace labelled ``meshlab.io/keep-namespace=true`` is kept (the nightly CronJob's
``manifests/nightly/00-namespaces.yaml``: its Role lives in the namespace, so the runner may
not delete it). ``up`` then claims it (label ``meshlab.io/lab=<lab>``), and ``up`` and ``down``
sweep it: every object labelled ``app.kubernetes.io/managed-by=meshlab`` of the kinds a lab
applies (:data:`SWEPT_KINDS`, plus any other kind of the lab's objects) is deleted, then the
sweep waits until the deleted workloads' pods are gone; ``down`` releases the claim.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshlab.envs.kube.facade import ClusterApi
from meshlab.envs.kube.guardrails import check_namespace_owner
from meshlab.envs.kube.objects import LAB_LABEL
from meshlab.envs.kube.ready import workload_of
from meshlab.envs.kube.settings import MANAGED_BY, KubeSettings
from meshlab.errors import LabError
from meshlab.polling import PollTimeout, wait_until

KEEP_LABEL = "meshlab.io/keep-namespace"
#: ``(apiVersion, kind)`` swept from a kept namespace (the nightly Role may delete these).
SWEPT_KINDS = (
    ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"), ("v1", "Service"),
    ("networking.istio.io/v1", "DestinationRule"), ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"), ("telemetry.istio.io/v1", "Telemetry"),
)
_MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())


class LabNamespace:
    """Creates, sweeps and removes the lab namespace.

    Args:
        api: the cluster facade.
        settings: the kube settings (``namespace``, ``ready_timeout_s`` bounds every wait).
        lab: the lab name.
        kinds: ``(apiVersion, kind)`` of the lab's objects (swept with :data:`SWEPT_KINDS`).
        poll_s: seconds between polls.
    """

    def __init__(self, api: ClusterApi, settings: KubeSettings, lab: str,
                 kinds: Iterable[tuple[str, str]] = (), poll_s: float = 1.0) -> None:
        self.api, self.settings, self.lab, self.poll_s = api, settings, lab, poll_s
        self.kinds = list(dict.fromkeys([*SWEPT_KINDS, *kinds]))

    def __repr__(self) -> str:
        return f"LabNamespace(namespace={self.settings.namespace!r}, lab={self.lab!r})"

    def _existing_labels(self) -> dict[str, str] | None:
        existing = self.api.read_namespace(self.settings.namespace)
        if existing is None:
            return None
        labels = dict((existing.get("metadata") or {}).get("labels") or {})
        check_namespace_owner(self.settings, labels, self.lab)
        return labels

    def prepare(self, labels: dict[str, str]) -> None:
        """Make the namespace ready for the lab: a fresh one with ``labels``, or the kept one
        swept and claimed.

        Raises:
            GuardrailError: it exists and is not meshlab's, or another lab's.
            LabError: a leftover namespace or object did not go away in time.
        """
        ns = self.settings.namespace
        existing = self._existing_labels()
        if existing is not None and existing.get(KEEP_LABEL) == "true":
            self.sweep()
            missing: dict[str, str | None] = {k: v for k, v in labels.items()
                                              if existing.get(k) != v}
            if missing:
                self.api.patch_namespace_labels(ns, missing)
            return
        if existing is not None:
            self._delete()
        self.api.create_namespace(ns, labels)

    def remove(self) -> bool:
        """Delete the namespace (a kept one: sweep it and release the claim); wait.

        Returns:
            False when there was no namespace.

        Raises:
            GuardrailError: it exists and is not meshlab's, or another lab's.
        """
        existing = self._existing_labels()
        if existing is None:
            return False
        if existing.get(KEEP_LABEL) == "true":
            self.sweep()
            self.api.patch_namespace_labels(self.settings.namespace, {LAB_LABEL: None})
        else:
            self._delete()
        return True

    def _delete(self) -> None:
        ns, timeout_s = self.settings.namespace, self.settings.ready_timeout_s
        self.api.delete_namespace(ns)
        try:
            wait_until(lambda: self.api.read_namespace(ns), lambda found: found is None,
                       timeout_s=timeout_s, every_s=self.poll_s, what=f"namespace {ns} gone")
        except PollTimeout:
            raise LabError(f"namespace {ns} still exists {timeout_s:g} s after its deletion "
                           f"(finalizers? kubectl get namespace {ns} -o yaml)") from None

    def sweep(self) -> list[str]:
        """Delete every meshlab object of the swept kinds and wait for their pods to go.

        Returns:
            ``Kind/name`` of each object deleted.
        """
        ns, deleted = self.settings.namespace, []
        for version, kind in self.kinds:
            for name in self.api.delete_labelled(ns, version, kind, _MANAGED_SELECTOR):
                deleted.append(f"{kind}/{name}")
        workloads = {d.split("/", 1)[1] for d in deleted
                     if d.split("/", 1)[0] in ("StatefulSet", "Deployment")}
        def left() -> list[str]:
            return [p["metadata"]["name"] for p in self.api.list_pods(ns)
                    if workload_of(p) in workloads]

        try:
            wait_until(left, lambda names: not names, timeout_s=self.settings.ready_timeout_s,
                       every_s=self.poll_s, what="swept workloads' pods gone")
        except PollTimeout as exc:
            raise LabError(f"pods {exc.last} of the swept workloads still exist "
                           f"{self.settings.ready_timeout_s:g} s after their deletion") from None
        return deleted
