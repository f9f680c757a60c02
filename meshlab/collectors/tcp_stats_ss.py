"""``tcp_stats`` values computed from ``ss -ti`` when the sidecar has no tcp_stats extension.

Stock istio-proxy is built without Envoy's ``envoy.transport_sockets.tcp_stats`` (Istio's
``ISTIO_DISABLED_EXTENSIONS``), so on a cluster the sidecar never has
``cluster.<c>;.tcp_stats.*`` or ``listener.<a>_<p>.tcp_stats.*``. An env says so with
``sidecar_has_tcp_stats = False`` (the kube env); :func:`meshlab.collectors.envoy_stats.snapshot`
then asks this module, and the same checks and pollers work on the same names.

The values come from the pod's socket table (``ss -Htanoie``, :mod:`meshlab.collectors.sockets`),
which is what ``tcp_stats`` itself reads (``TCP_INFO``):

- ``cluster.<outbound cluster>;.tcp_stats.<stat>``: the sidecar's (uid 1337) established
  sockets whose peer is one of the cluster's endpoints (admin ``/clusters``, Envoy's
  ``<cluster>::<ip>:<port>::<stat>::<value>`` lines);
- ``listener.<address>_<port>.tcp_stats.<stat>``: established sockets whose local port is
  ``<port>`` (e.g. 15006: every connection the sidecar accepted inbound);
- ``cx_tx_retransmitted_segments`` = Σ ``retrans`` totals, ``cx_tx_unacked_segments`` =
  Σ ``unacked``, ``cx_tx_unsent_bytes`` = Σ ``notsent``; the other tcp_stats counters are
  left out.

Unlike Envoy's counters, these sums cover **open sockets only**: a closed connection's
retransmits are gone. Read them while the fault is active (as the gauges must be anyway).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from meshlab.collectors.sockets import SocketInfo
from meshlab.collectors.sockets import snapshot as socket_snapshot
from meshlab.collectors.stats_text import parse_stats, stats_path
from meshlab.envs.base import Env
from meshlab.missing import is_missing

SIDECAR_UID = 1337
#: tcp_stats name → the :class:`SocketInfo` field summed for it.
FIELDS = {"cx_tx_retransmitted_segments": "retrans_total",
          "cx_tx_unacked_segments": "unacked", "cx_tx_unsent_bytes": "notsent_bytes"}
#: Why the numbers come from ``ss``, for journals and reports.
NOTE = ("tcp_stats: this sidecar has no tcp_stats transport socket (stock istio-proxy); "
        "cluster.*.tcp_stats.* and listener.*.tcp_stats.* are computed from `ss -ti` in the pod "
        "netns (open sockets only)")
_ENDPOINT = re.compile(r"^(outbound\|[^:]+)::(\d+\.\d+\.\d+\.\d+:\d+)::cx_total::")
_LISTENER = re.compile(r"^listener\.([\d.]+)_(\d+)\.downstream_cx_total$")


def _sum(sockets: Iterable[SocketInfo], field: str) -> int:
    return sum(int(getattr(s, field) or 0) for s in sockets)


def _established(sockets: list[SocketInfo]) -> list[SocketInfo]:
    return [s for s in sockets if s.state == "ESTAB"]


def tcp_stats_from_sockets(sockets: list[SocketInfo], clusters: dict[str, set[str]],
                           listeners: dict[str, int]) -> dict[str, int]:
    """The tcp_stats names for ``clusters`` (``{cluster name: {"ip:port" endpoint}}``) and
    ``listeners`` (``{"<address>_<port>": port}``) from one socket snapshot.

    Returns:
        ``{"cluster.<c>;.tcp_stats.<stat>" | "listener.<l>.tcp_stats.<stat>": value}``.
    """
    estab = _established(sockets)
    out: dict[str, int] = {}
    for cluster, endpoints in clusters.items():
        mine = [s for s in estab if s.uid == SIDECAR_UID and s.peer in endpoints]
        for stat, field in FIELDS.items():
            out[f"cluster.{cluster};.tcp_stats.{stat}"] = _sum(mine, field)
    for listener, port in listeners.items():
        mine = [s for s in estab if s.local_port == port]
        for stat, field in FIELDS.items():
            out[f"listener.{listener}.tcp_stats.{stat}"] = _sum(mine, field)
    return out


def cluster_endpoints(clusters_text: str) -> dict[str, set[str]]:
    """Outbound clusters and their endpoints from admin ``/clusters`` text:
    ``{cluster: {"ip:port"}}``."""
    out: dict[str, set[str]] = {}
    for line in clusters_text.splitlines():
        if match := _ENDPOINT.match(line):
            out.setdefault(match.group(1), set()).add(match.group(2))
    return out


def listeners_from_stats(stats: dict[str, int]) -> dict[str, int]:
    """The listeners a sidecar has, from its ``downstream_cx_total`` stat names:
    ``{"<address>_<port>": port}``."""
    return {f"{m.group(1)}_{m.group(2)}": int(m.group(2))
            for name in stats if (m := _LISTENER.match(name))}


def snapshot(env: Env, pod: str, filter_regex: str | None = "tcp_stats") -> dict[str, int]:
    """tcp_stats of ``pod``'s sidecar computed from ``ss`` (same shape as
    :func:`meshlab.collectors.envoy_stats.snapshot`), filtered by ``filter_regex``.

    Returns:
        ``{stat name: value}``; a dry run's socket snapshot (a Missing) as it is.

    Raises:
        LabError: the admin endpoint or ``ss`` failed.
    """
    clusters = cluster_endpoints(env.sidecar_admin(pod, "/clusters"))
    listeners = listeners_from_stats(
        parse_stats(env.sidecar_admin(pod, stats_path("downstream_cx_total$"))))
    sockets = socket_snapshot(env.pod_shell(pod))
    if is_missing(sockets):
        return sockets  # type: ignore[return-value]
    values = tcp_stats_from_sockets(sockets, clusters, listeners)
    if not filter_regex:
        return values
    pattern = re.compile(filter_regex)
    return {k: v for k, v in values.items() if pattern.search(k)}
