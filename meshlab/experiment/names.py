"""The lab's names as a suite needs them — pods, the namespace, service FQDNs, Envoy cluster
names, URLs — taken from the env's topology, so one suite runs on the local lab (namespace
``mark`` in the book's manifests) and on any kube namespace.

Envoy/Istio naming (docs/ENVOY.md): a sidecar's outbound cluster for a Kubernetes Service is
``outbound|<port>|<subset>|<service>.<namespace>.svc.<cluster domain>`` and its inbound one
``inbound|<port>||``; a StatefulSet's pods are ``<name>-<ordinal>`` (a Deployment's are named
by the kube env's ``<deployment>-<ordinal>`` alias).
"""

from __future__ import annotations

from functools import cached_property

from meshlab.envs.base import Env
from meshlab.errors import ConfigError

#: The Kubernetes cluster domain (kubelet ``--cluster-domain``; Istio's default trust domain).
CLUSTER_DOMAIN = "cluster.local"


class LabNames:
    """Names in the lab ``env`` runs (read from its pods on first use).

    Args:
        env: the env, up.
        cluster_domain: the cluster's DNS domain.
    """

    def __init__(self, env: Env, cluster_domain: str = CLUSTER_DOMAIN) -> None:
        self.env = env
        self.cluster_domain = cluster_domain

    def __repr__(self) -> str:
        return f"LabNames(env={self.env.name!r}, lab={self.env.lab!r})"

    @cached_property
    def namespace(self) -> str:
        """The namespace the lab's pods run in (``mark`` in the book's manifests; the kube
        settings' ``namespace`` on a cluster).

        Raises:
            ConfigError: the lab has no pods, or its pods are in more than one namespace.
        """
        found = sorted({p.namespace for p in self.env.pods()})
        if len(found) != 1:
            raise ConfigError(f"lab {self.env.lab!r}: expected its pods in one namespace, "
                              f"found {found or 'no pods'}")
        return found[0]

    def pod(self, workload: str, ordinal: int = 0) -> str:
        """The name of replica ``ordinal`` of ``workload``, e.g. ``fortio-server-l2-1``.

        Raises:
            ConfigError: the lab has no such pod (its pods are named).
        """
        name = f"{workload}-{ordinal}"
        self.env.pod(name)
        return name

    def fqdn(self, service: str) -> str:
        """``<service>.<namespace>.svc.<cluster domain>``."""
        return f"{service}.{self.namespace}.svc.{self.cluster_domain}"

    def outbound_cluster(self, service: str, port: int, subset: str = "") -> str:
        """The sidecar's outbound cluster for ``service:port`` (and a DestinationRule
        ``subset``), as in access logs and ``/stats``: ``outbound|8080||a.ns.svc.cluster.local``."""
        return f"outbound|{port}|{subset}|{self.fqdn(service)}"

    @staticmethod
    def inbound_cluster(port: int) -> str:
        """The sidecar's inbound cluster for the app's ``port``: ``inbound|8080||``."""
        return f"inbound|{port}||"

    @staticmethod
    def url(service: str, port: int, path: str = "/") -> str:
        """``http://<service>:<port><path>`` as a pod of the lab's namespace resolves it."""
        return f"http://{service}:{port}{path}"
