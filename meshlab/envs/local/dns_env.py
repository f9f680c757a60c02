"""The local env's cluster-DNS surface (the :class:`~meshlab.envs.capabilities.ClusterDns`
capability): per-pod DNS query counts and the dns-error fault's front, for :class:`LocalEnv`
(:mod:`meshlab.envs.local.lab`) to inherit.

The DNS server itself is :mod:`meshlab.envs.local.kube_dns`; the fault front
:mod:`meshlab.envs.local.dns_fault` / :mod:`meshlab.envs.local.dns_front`.
"""

from __future__ import annotations

from meshlab.envs.local import dns_fault, kube_dns
from meshlab.envs.local.plan import LabPlan
from meshlab.envs.local.state import LabState
from meshlab.errors import LabError


class ClusterDnsMixin:
    """Cluster DNS methods of the local env (needs ``lab``, ``plan`` and ``state``)."""

    lab: str
    plan: LabPlan
    state: LabState

    def dns_query_counts(self) -> dict[str, int]:
        """DNS queries each pod has sent to kube-dns since ``up``, ``{pod: count}`` (every pod
        listed; from dnsmasq's ``log-queries`` and a fault front's log, by source pod IP).
        Queries a sidecar's DNS proxy answered itself never reach kube-dns and are not
        counted; those it forwarded are counted for its pod.

        Raises:
            LabError: the lab has no cluster DNS (it is not up).
        """
        state = LabState.load(self.lab)
        if state is None or not state.dns:
            raise LabError(f"lab {self.lab!r} has no cluster DNS (is it up?)")
        return kube_dns.query_counts(self.plan, state)

    def set_dns_fault(self, fault_id: str, patterns: list[str], action: str,
                      percent: float) -> str:
        """kube-dns answers ``action`` (``nxdomain``/``servfail``/``timeout``) for
        ``percent`` % of the queries whose name matches a glob of ``patterns``, until
        :meth:`clear_dns_fault` (:mod:`meshlab.envs.local.dns_fault`).

        Raises:
            ConfigError: another dns-error fault is active. LabError: no cluster DNS, or the
                front did not start.
        """
        return dns_fault.start(self.plan, fault_id, patterns, action, percent)

    def clear_dns_fault(self, fault_id: str) -> str:
        """Remove the fault's front and rules (idempotent)."""
        return dns_fault.stop(self.lab, fault_id)
