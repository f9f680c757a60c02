"""tcp_stats from ``ss`` (the kube env's fallback for stock istio-proxy), on a real lab: the
names it derives are exactly the local sidecar's own tcp_stats names for the same stats, and
its sums follow the socket table."""

from __future__ import annotations

import pytest

from meshlab.collectors import envoy_stats, tcp_stats_ss
from meshlab.collectors.sockets import SocketInfo
from meshlab.experiment import Run
from meshlab.journal import RunJournal

LAB = "tss"
L1 = "fortio-server-0"
L2_CLUSTER = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"

pytestmark = pytest.mark.lab


class NoTcpStats:
    """The lab seen as a cluster whose sidecars lack tcp_stats (every call delegated)."""

    sidecar_has_tcp_stats = False

    def __init__(self, env) -> None:
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)


def test_ss_derived_names_match_the_sidecars_tcp_stats(running_lab, tmp_path):
    with running_lab(LAB) as env:
        Run(env, RunJournal(tmp_path, "tcp-stats-ss")).load(
            "warm", "http://fortio-server:8070/echo?size=100", users=2, max_requests=20)
        real = envoy_stats.snapshot(env, L1)
        derived = envoy_stats.snapshot(NoTcpStats(env), L1)
    real_names = {n for n in real if n.rsplit(".", 1)[-1] in tcp_stats_ss.FIELDS}
    # the hops that carried traffic have the sidecar's own names, derived the same way
    used = {n for n in real_names if f"{L2_CLUSTER};" in n or "_15006." in n}
    assert len(used) == 6 and used <= set(derived), used - set(derived)
    # idle keep-alive connections: nothing unacknowledged or unsent on either side
    for name in used:
        if "unacked" in name or "unsent" in name:
            assert derived[name] == 0 == real[name], name


def test_sums_cover_the_sidecars_established_sockets_to_the_cluster_port():
    def sock(local: str, peer: str, uid: int | None, **info: int) -> SocketInfo:
        return SocketInfo("ESTAB", 0, 0, local, peer, uid=uid, **info)

    sockets = [sock("10.244.1.2:44392", "10.244.2.2:8080", 1337, retrans_total=3, unacked=2,
                    notsent_bytes=100),
               sock("10.244.1.2:44394", "10.244.2.3:8080", 1337, retrans_total=1),
               sock("10.244.1.2:59018", "10.96.0.10:8080", None, retrans_total=9),  # the app
               sock("10.244.1.2:15006", "10.244.1.3:40000", 1337, unacked=4)]
    endpoints = tcp_stats_ss.cluster_endpoints(
        f"{L2_CLUSTER}::10.244.2.2:8080::cx_total::3\n{L2_CLUSTER}::10.244.2.3:8080::cx_total::1\n"
        f"{L2_CLUSTER}::observability_name::{L2_CLUSTER}\n")
    assert endpoints == {L2_CLUSTER: {"10.244.2.2:8080", "10.244.2.3:8080"}}
    values = tcp_stats_ss.tcp_stats_from_sockets(sockets, endpoints,
                                                 {"0.0.0.0_15006": 15006})
    base = f"cluster.{L2_CLUSTER};.tcp_stats."
    assert values[base + "cx_tx_retransmitted_segments"] == 4
    assert values[base + "cx_tx_unacked_segments"] == 2
    assert values[base + "cx_tx_unsent_bytes"] == 100
    assert values["listener.0.0.0.0_15006.tcp_stats.cx_tx_unacked_segments"] == 4
