"""The ``dns`` series: DNS queries each pod has sent to the cluster DNS (kube-dns), from the
env's :class:`~meshlab.envs.capabilities.ClusterDns` capability (the local lab counts
dnsmasq's query log by source address, reading only what was appended since the last tick).

One line per tick for the whole lab (target ``kube-dns``): ``{"queries": {pod: count}}``,
cumulative since the lab came up; the report turns them into queries per second per pod. A
sidecar with Istio's DNS proxying answers mesh names itself: those never reach kube-dns.
"""

from __future__ import annotations

from typing import Any

from meshlab.envs.capabilities import ClusterDns


class DnsQueriesTarget:
    """A sampler target: the lab's per-pod kube-dns query counts per read.

    Args:
        env: an env with the :class:`~meshlab.envs.capabilities.ClusterDns` capability.
    """

    series = "dns"
    name = "kube-dns"

    def __init__(self, env: ClusterDns) -> None:
        self.env = env

    def __repr__(self) -> str:
        return "DnsQueriesTarget(kube-dns)"

    def read(self) -> dict[str, Any]:
        """``{"queries": {pod: count}}``; raises when the counts cannot be read."""
        return {"queries": self.env.dns_query_counts()}
