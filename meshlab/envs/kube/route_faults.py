"""VirtualService HTTP faults on a cluster (the :class:`~meshlab.envs.capabilities.RouteFaults`
capability of the kube env): istiod pushes them to the sidecars, as the local lab's istiod does.

- The lab's own VirtualService for the host (from its manifests), if there is one, is applied
  again with a ``fault`` on each of its ``http`` entries that routes to the host (and port): its
  timeout and retries stay. Revert applies the manifest's VirtualService again, unchanged.
- Otherwise a VirtualService ``meshlab-http-fault-<service>`` is created for the host, with
  the fault and a plain route, labelled ``meshlab.io/http-fault=<service>`` and the lab's
  labels; revert deletes it by that label.

Both return once every meshed pod's ``/config_dump`` (through the admin port-forward) shows the
change, as istiod's push lands; a dry run prints the apply/delete and waits for nothing.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from meshlab.envs.kube.facade import ClusterApi
from meshlab.envs.kube.objects import LAB_LABEL
from meshlab.envs.kube.settings import MANAGED_BY, KubeSettings
from meshlab.envs.route_faults import wait_applied
from meshlab.errors import ConfigError
from meshlab.model import Service, Topology

VS_API = "networking.istio.io/v1"
FAULT_LABEL = "meshlab.io/http-fault"


def fault_spec(abort_status: int | None, abort_pct: float, delay_s: float | None,
               delay_pct: float) -> dict[str, Any]:
    """A VirtualService ``http[].fault``: ``{"abort": {"httpStatus", "percentage": {"value"}},
    "delay": {"fixedDelay": "<ms>ms", "percentage": {"value"}}}`` (only the parts given)."""
    fault: dict[str, Any] = {}
    if abort_status is not None:
        fault["abort"] = {"httpStatus": abort_status, "percentage": {"value": abort_pct}}
    if delay_s is not None:
        fault["delay"] = {"fixedDelay": f"{round(delay_s * 1000)}ms",
                          "percentage": {"value": delay_pct}}
    return fault


def _routes_to(entry: dict[str, Any], names: set[str], port: int | None) -> bool:
    for dest in (r.get("destination") or {} for r in entry.get("route") or []):
        number = (dest.get("port") or {}).get("number")
        if dest.get("host") in names and (port is None or number in (None, port)):
            return True
    return False


class KubeRouteFaults:
    """The kube env's route faults (a mixin of :class:`~meshlab.envs.kube.env.KubeEnv`, which
    provides the attributes below)."""

    api: ClusterApi
    namespace: str
    settings: KubeSettings
    lab: str
    topology: Topology
    objects: list[dict[str, Any]]

    if TYPE_CHECKING:  # pragma: no cover - KubeEnv's
        def pods(self) -> list[Any]: ...
        def sidecar_admin(self, pod: str, path: str, *, method: str = "GET",
                          port: int = 15000) -> str: ...

    def _service(self, host: str) -> Service:
        for svc in self.topology.services:
            if host in (svc.name, f"{svc.name}.{svc.namespace}",
                        svc.fqdn(self.topology.cluster.cluster_domain)):
                return svc
        raise ConfigError(f"host: no Service named {host!r} (services: "
                          f"{', '.join(s.name for s in self.topology.services)})")

    def _names(self, svc: Service) -> tuple[str, set[str]]:
        """The Service's FQDN in the lab namespace, and every name a route may give it."""
        fqdn = f"{svc.name}.{self.namespace}.svc.{self.topology.cluster.cluster_domain}"
        return fqdn, {svc.name, f"{svc.name}.{self.namespace}", f"{svc.name}.{self.namespace}.svc",
                      fqdn}

    def _lab_vs(self, names: set[str]) -> dict[str, Any] | None:
        return next((o for o in self.objects if o.get("kind") == "VirtualService"
                     and names & set((o.get("spec") or {}).get("hosts") or [])), None)

    def _wait(self, fqdn: str, port: int | None, present: bool) -> None:
        if not self.api.dry_run:
            wait_applied(self.sidecar_admin, [p.name for p in self.pods() if p.meshed], fqdn,
                         port, present, timeout_s=self.settings.ready_timeout_s)

    def set_route_fault(self, host: str, port: int | None, *, abort_status: int | None,
                        abort_pct: float, delay_s: float | None, delay_pct: float) -> str:
        """Put the fault on the host's VirtualService (see the module docstring).

        Raises:
            ConfigError: no such Service. LabError: the API refused, or a sidecar did not get
                the push within ``settings.ready_timeout_s``.
        """
        svc = self._service(host)
        fqdn, names = self._names(svc)
        fault = fault_spec(abort_status, abort_pct, delay_s, delay_pct)
        lab_vs = self._lab_vs(names)
        if lab_vs is not None:
            body = copy.deepcopy(lab_vs)
            for entry in body["spec"].get("http") or []:
                if _routes_to(entry, names, port):
                    entry["fault"] = fault
        else:
            dest: dict[str, Any] = {"host": svc.name}
            if port is not None:
                dest["port"] = {"number": port}
            body = {"apiVersion": VS_API, "kind": "VirtualService",
                    "metadata": {"name": f"meshlab-http-fault-{svc.name}",
                                 "labels": {**MANAGED_BY, LAB_LABEL: self.lab,
                                            FAULT_LABEL: svc.name}},
                    "spec": {"hosts": [svc.name],
                             "http": [{"fault": fault, "route": [{"destination": dest}]}]}}
        verb = self.api.apply(self.namespace, body)
        self._wait(fqdn, port, present=True)
        return f"VirtualService {body['metadata']['name']} {verb} with a fault on {fqdn}"

    def clear_route_fault(self, host: str, port: int | None) -> str:
        """Apply the lab's VirtualService again, or delete the one the fault created
        (idempotent)."""
        svc = self._service(host)
        fqdn, names = self._names(svc)
        lab_vs = self._lab_vs(names)
        if lab_vs is not None:
            self.api.apply(self.namespace, copy.deepcopy(lab_vs))
            done = f"VirtualService {lab_vs['metadata']['name']} applied again without the fault"
        else:
            gone = self.api.delete_labelled(self.namespace, VS_API, "VirtualService",
                                            f"{FAULT_LABEL}={svc.name}")
            done = f"deleted {gone or 'no'} VirtualService(s) with {FAULT_LABEL}={svc.name}"
        self._wait(fqdn, port, present=False)
        return done
