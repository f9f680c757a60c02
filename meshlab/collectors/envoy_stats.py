"""Sidecar ``/stats`` snapshots (counters and gauges) and the deltas between two of them.

Reads the admin endpoint through :meth:`Env.sidecar_admin` (local: curl in the pod's netns;
cluster: port-forward / exec into istio-proxy), text format ``name: value`` per line
(ENVOY.md §3, ``E:source/server/admin/stats_handler.cc``). Histogram lines
(``P0(…) … P100(…)`` or ``No recorded values``) are skipped: a snapshot holds only integers.
The collector series (:class:`EnvoyStatsTarget`, docs/CONTRACTS.md §5) also keeps the histograms
(:func:`parse_stats_text`) and tells counters from gauges with ``/stats?type=Gauges``.

``tcp_stats`` names (Envoy's ``envoy.transport_sockets.tcp_stats``, docs/SIDECAR.md; checked
against a running lab sidecar), with Istio ≥ 1.23's ``;`` after the cluster name:

- ``cluster.<cluster>;.tcp_stats.<stat>`` for the sidecar's upstream sockets, e.g. L1's
  ``cluster.outbound|8080||fortio-server-l2.mark.svc.cluster.local;.tcp_stats.cx_tx_retransmitted_segments``
  (:func:`cluster_tcp_stat`);
- ``listener.0.0.0.0_<port>.tcp_stats.<stat>`` for accepted sockets, e.g. L2's
  ``listener.0.0.0.0_15006.tcp_stats.cx_tx_unsent_bytes`` (:func:`listener_tcp_stat`).

Counters (only grow): ``cx_tx_segments``, ``cx_rx_segments``, ``cx_tx_data_segments``,
``cx_rx_data_segments``, ``cx_tx_retransmitted_segments``, ``cx_rx_bytes_received``,
``cx_tx_bytes_sent``, ``cx_data_segments_delivered``, ``cx_lost``. Gauges (sum over the open
sockets, back to 0 when they close): ``cx_tx_unsent_bytes`` (bytes written but not yet sent,
``tcpi_notsent_bytes``) and ``cx_tx_unacked_segments`` (sent, not yet acknowledged,
``tcpi_unacked``).

The sidecar reads ``TCP_INFO`` only every ``update_period`` (the lab:
:data:`meshlab.envs.local.istiod.TCP_STATS_UPDATE_PERIOD_S` = 1 s) and at close, so a gauge
must be polled *while* a fault is active (:class:`StatsPoller`); read afterwards it is 0 again.

In a dry run (:func:`meshlab.missing.dry_run_scope`) the admin call is printed and answers
nothing: a snapshot is a :class:`~meshlab.missing.Missing` (``stats of <pod> …``), and
:func:`delta`, :func:`max_values` and the poller's readings of one are Missing too.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Self

from meshlab.collectors import tcp_stats_ss
from meshlab.collectors.admin_http import AdminClient
from meshlab.collectors.stats_text import parse_stats, parse_stats_text, stats_path
from meshlab.envs.base import Env
from meshlab.errors import MeshlabError
from meshlab.missing import dry_run_active, is_missing, not_measured

#: Counters of the tcp_stats extension (charged with positive ``tcp_info`` deltas).
TCP_STATS_COUNTERS = ("cx_tx_segments", "cx_rx_segments", "cx_tx_data_segments",
                      "cx_rx_data_segments", "cx_tx_retransmitted_segments",
                      "cx_rx_bytes_received", "cx_tx_bytes_sent", "cx_data_segments_delivered",
                      "cx_lost")
#: Gauges of the tcp_stats extension (accumulated over open sockets).
TCP_STATS_GAUGES = ("cx_tx_unsent_bytes", "cx_tx_unacked_segments")


def cluster_tcp_stat(cluster: str, stat: str) -> str:
    """``cluster.<cluster>;.tcp_stats.<stat>`` (an upstream socket stat)."""
    return f"cluster.{cluster};.tcp_stats.{stat}"


def listener_tcp_stat(port: int, stat: str, address: str = "0.0.0.0") -> str:
    """``listener.<address>_<port>.tcp_stats.<stat>`` (an accepted socket stat)."""
    return f"listener.{address}_{port}.tcp_stats.{stat}"


def snapshot(env: Env, pod: str, filter_regex: str | None = "tcp_stats") -> dict[str, int]:
    """One reading of a sidecar's counters and gauges.

    Args:
        env: the env (:meth:`sidecar_admin`).
        pod: the meshed pod (name or workload).
        filter_regex: Envoy's ``/stats?filter=`` regex (None: every stat).

    Returns:
        ``{stat name: integer value}``. For an env whose sidecars have no tcp_stats extension
        (``env.sidecar_has_tcp_stats`` False: stock istio-proxy on a cluster), a tcp_stats
        filter is answered from ``ss`` (:mod:`meshlab.collectors.tcp_stats_ss`). In a dry
        run, after the (printed) call, a Missing ``stats of <pod> (filter <regex>)``.

    Raises:
        ConfigError: the pod has no sidecar.
        LabError: the admin endpoint did not answer.
    """
    if not env.sidecar_has_tcp_stats and filter_regex and \
            "tcp_stats" in filter_regex:
        values = tcp_stats_ss.snapshot(env, pod, filter_regex)
    else:
        values = parse_stats(env.sidecar_admin(pod, stats_path(filter_regex)))
    if dry_run_active():
        return not_measured(f"stats of {pod} (filter {filter_regex})")  # type: ignore[return-value]
    return values


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """``after - before`` per stat (a stat missing from ``before`` counts from 0).

    Stats only in ``before`` are left out (the sidecar dropped them, e.g. a restart). A
    Missing snapshot (a dry run) gives a Missing.
    """
    if is_missing(after):
        return after
    if is_missing(before):
        return before
    return {name: value - before.get(name, 0) for name, value in after.items()}


def max_values(samples: list[dict[str, int]]) -> dict[str, int]:
    """Per stat, the largest value over ``samples`` (e.g. a gauge's peak during a fault); a
    Missing sample (a dry run) makes it a Missing."""
    unmeasured = next((sample for sample in samples if is_missing(sample)), None)
    if unmeasured is not None:
        return unmeasured
    out: dict[str, int] = {}
    for sample in samples:
        for name, value in sample.items():
            if name not in out or value > out[name]:
                out[name] = value
    return out


class StatsPoller:
    """Samples a sidecar's stats in a background thread until stopped (a context manager).

    Args:
        env: the env.
        pod: the meshed pod.
        filter_regex: ``/stats?filter=`` regex.
        interval_s: seconds between samples; keep it under the sidecar's tcp_stats
            ``update_period`` (1 s in the lab) so no reading is missed.
        max_samples: the poller stops by itself after this many samples (bounded work).

    Attributes:
        samples: ``[(epoch_s, {stat: value})]`` in order; in a dry run one sample, a Missing
            (the poller stops after it: nothing would change).
        errors: admin calls that failed (text), e.g. while the pod was unreachable.
    """

    def __init__(self, env: Env, pod: str, filter_regex: str | None = "tcp_stats",
                 interval_s: float = 0.25, max_samples: int = 2400) -> None:
        self.env = env
        self.pod = pod
        self.filter_regex = filter_regex
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stats-{pod}", daemon=True)

    def __repr__(self) -> str:
        return (f"StatsPoller(pod={self.pod!r}, samples={len(self.samples)}, "
                f"errors={len(self.errors)}, interval_s={self.interval_s})")

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            try:
                values = snapshot(self.env, self.pod, self.filter_regex)
                self.samples.append((time.time(), values))
                if is_missing(values):
                    return
            except MeshlabError as exc:
                self.errors.append(str(exc))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sampling and wait for the thread (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def max_values(self, names: list[str] | None = None) -> dict[str, int]:
        """Each stat's peak over the samples (only ``names`` when given; a dry run's: each
        a Missing)."""
        peaks = max_values([values for _, values in self.samples])
        return peaks if names is None else {n: peaks.get(n, 0) for n in names}

    def nonzero_samples(self, name: str) -> int:
        """How many samples show ``name`` above 0 (a dry run's: a Missing)."""
        unmeasured = max_values([values for _, values in self.samples])
        if is_missing(unmeasured):
            return unmeasured[name]  # type: ignore[return-value]
        return sum(1 for _, values in self.samples if values.get(name, 0) > 0)


def _changed(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    if before is None:
        return dict(after)
    return {name: value for name, value in after.items() if before.get(name, ...) != value}


class EnvoyStatsTarget:
    """A sampler target: one sidecar's whole ``/stats`` per read, delta-encoded.

    Counters and gauges look alike in the text format, so the gauge names are learnt from
    ``/stats?type=Gauges`` (Envoy ``stats_params.cc``) on the first read and again only when a
    name never seen before appears: steady state is one admin call per read, never more than
    two. The calls go over a kept-alive connection where the env allows it
    (:class:`~meshlab.collectors.admin_http.AdminClient`).

    Args:
        env: the env (:meth:`sidecar_admin`).
        pod: the meshed pod; also the series' ``target``.

    Attributes:
        admin_calls: admin requests made so far.
    """

    series = "envoy_stats"

    def __init__(self, env: Env, pod: str) -> None:
        self.env = env
        self.name = pod
        self.admin_calls = 0
        self._client = AdminClient(env, pod)
        self._gauges: set[str] = set()
        self._known: set[str] = set()
        self._prev: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"EnvoyStatsTarget(pod={self.name!r}, admin_calls={self.admin_calls})"

    def _admin(self, path: str) -> str:
        self.admin_calls += 1
        return self._client.get(path)

    def close(self) -> None:
        """Close the kept-alive admin connection."""
        self._client.close()

    def read(self) -> dict[str, dict[str, Any]]:
        """``{"counters", "gauges", "histograms"}`` that changed since the previous read (all
        of them on the first read and on the first after a failed one).

        Raises:
            LabError: the admin endpoint did not answer (the next read is complete again).
        """
        prev, self._prev = self._prev, None
        scalars, hists = parse_stats_text(self._admin("/stats"))
        if not scalars.keys() <= self._known:
            self._gauges = set(parse_stats(self._admin("/stats?type=Gauges")))
            self._known = set(scalars)
        current = {"counters": {n: v for n, v in scalars.items() if n not in self._gauges},
                   "gauges": {n: v for n, v in scalars.items() if n in self._gauges},
                   "histograms": hists}
        self._prev = current
        return {key: _changed(prev and prev[key], values) for key, values in current.items()}
