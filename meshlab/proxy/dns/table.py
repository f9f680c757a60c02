"""The DNS proxy's name table: which names the sidecar answers itself, built from the Services
in ``sidecar.json`` (what istiod's NDS ``NameTable`` gives Istio's agent).

For a Service ``<svc>.<ns>.svc.<domain>`` seen from a pod in namespace ``<pod ns>``, as Istio's
agent builds its table (``pkg/dns/client``, alt hosts of a Kubernetes Service):

- the FQDN and its short forms ``<svc>.<ns>.svc`` and ``<svc>.<ns>`` are answered with A
  records of the ClusterIP under the name asked;
- ``<svc>`` alone too when the Service is in the pod's own namespace;
- a short form with one of the pod's search domains appended (what a resolver with
  ``ndots:5`` sends first, e.g. ``<svc>.<ns>.<pod ns>.svc.<domain>``) is answered with a CNAME
  to the FQDN plus its A record, so the app stops at its first query instead of walking the
  search path through kube-dns.

Names are compared in lower case with a trailing dot. A name that is not in the table is not
answered here: the server forwards it (:mod:`meshlab.proxy.dns.server`).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.proxy.config.sidecar import SidecarConfig


def _norm(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class Answer:
    """A table hit.

    Attributes:
        canonical: the Service FQDN (with a trailing dot).
        addresses: its IPv4 addresses (the ClusterIP).
        cname: True when the name asked is a search-path expansion, answered with a CNAME to
            ``canonical`` before the A records.
    """

    canonical: str
    addresses: tuple[str, ...]
    cname: bool


class NameTable:
    """The names one sidecar answers (see the module docstring).

    Args:
        config: the sidecar config (its Services, pod namespace and cluster domain).
    """

    def __init__(self, config: SidecarConfig) -> None:
        domain = config.cluster_domain.strip(".")
        pod_ns = config.pod.namespace
        self.search = (f"{pod_ns}.svc.{domain}", f"svc.{domain}", domain)
        self._direct: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._expanded: dict[str, tuple[str, tuple[str, ...]]] = {}
        for svc in config.services:
            fqdn, ips = _norm(svc.fqdn), (svc.cluster_ip,)
            short = [f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}"]
            if svc.namespace == pod_ns:
                short.append(svc.name)
            for name in (fqdn, *short):
                self._direct[_norm(name)] = (fqdn, ips)
            for name in short:
                for suffix in self.search:
                    expanded = _norm(f"{name}.{suffix}")
                    if expanded not in self._direct:
                        self._expanded.setdefault(expanded, (fqdn, ips))
        for name in self._direct:  # a direct name is never answered as an expansion
            self._expanded.pop(name, None)

    def __repr__(self) -> str:
        return f"NameTable(names={len(self._direct)}, expansions={len(self._expanded)})"

    def __len__(self) -> int:
        return len(self._direct) + len(self._expanded)

    def lookup(self, qname: str) -> Answer | None:
        """The table's answer for ``qname`` (any case, with or without the trailing dot), or
        None when the name is not in the table (the query is forwarded)."""
        name = _norm(qname)
        hit = self._direct.get(name)
        if hit is not None:
            return Answer(hit[0], hit[1], cname=False)
        hit = self._expanded.get(name)
        if hit is not None:
            return Answer(hit[0], hit[1], cname=True)
        return None
