"""Chaos Toolkit probes: numbers from the lab, for steady-state tolerances and the journal.

Use them as python providers (``"module": "meshlab.chaostoolkit.probes"``). Each returns one
number, so any Chaos Toolkit tolerance form works on it: an exact value (``0``), a two-item
list as inclusive bounds (``[0, 5]``), or ``{"type": "range", "range": [a, b]}``. Each value
is also recorded as an observation in the meshlab run journal.

``load`` arguments of :func:`tps` and :func:`latency_percentile_ms` are either

- a string: the name of a load started by ``start_load`` (waited for if still running) or of a
  probe load run earlier, whose latest result is used; or
- an object: a short load run now, to completion, from the client pod and journaled, e.g.
  ``{"name": "steady", "url": "http://fortio-server:8070/echo", "users": 2,
  "rate_per_s": 50, "duration_s": 2}`` (keys: ``url, users, rate_per_s, duration_s,
  max_requests, timeout_s, name, from_pod``). A steady-state hypothesis typically runs the
  load in its first probe and reads it by name in the next one.
"""

from __future__ import annotations

from typing import Any

from meshlab.chaostoolkit import session
from meshlab.collectors.sockets import select, snapshot
from meshlab.collectors.stats_text import int_value, stat_lines, stats_path
from meshlab.errors import ConfigError, LabError
from meshlab.load.driver import LoadResult
from meshlab.load.spec import LoadSpec

__all__ = ["latency_percentile_ms", "response_flag_count", "socket_state_count",
           "tcp_stats_value", "tps"]

#: Socket states as ``ss`` prints them.
SS_STATES = frozenset({"ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2",
                       "TIME-WAIT", "CLOSE", "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING",
                       "UNCONN"})
_LOAD_KEYS = frozenset({"url", "users", "rate_per_s", "duration_s", "max_requests",
                        "timeout_s", "name", "from_pod", "mode", "distribution", "connections",
                        "seed"})


def _load(s: session.Session, load: str | dict[str, Any]) -> LoadResult:
    if isinstance(load, dict):
        unknown = set(load) - _LOAD_KEYS
        if unknown:
            raise ConfigError(f"probe load: unknown key(s) {sorted(unknown)} "
                              f"(known: {sorted(_LOAD_KEYS)})")
        opts = {"users": 2, "duration_s": 2.0, "name": "probe", **load}
        from_pod = opts.pop("from_pod", None)
        return s.probe_load(LoadSpec(**opts), from_pod)
    result = s.finish_load(load, wait=True) if load in s.loads else s.results.get(load)
    if result is None:
        raise ConfigError(f"no load named {load!r} was started or run in this experiment "
                          f"(loads: {sorted(set(s.results) | set(s.loads)) or 'none'})")
    return result


def _name(load: str | dict[str, Any]) -> str:
    return load if isinstance(load, str) else str(load.get("name", "probe"))


def tps(load: str | dict[str, Any], configuration: dict[str, Any] | None = None) -> float:
    """Requests per second of a load (all responses, errors included).

    Args:
        load: a load name or a probe-load object (see the module docstring).
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Returns:
        TPS over the load's actual run time (requests / elapsed s), 3 decimals.

    Raises:
        ConfigError: unknown load name or bad load options.
        LabError: the load runner failed.
    """
    s = session.current(configuration)
    value = round(_load(s, load).tps, 3)
    return s.observe("tps", _name(load), value)


def latency_percentile_ms(load: str | dict[str, Any], percentile: float,
                          configuration: dict[str, Any] | None = None) -> float:
    """A latency percentile of a load, from its µs HdrHistogram, in milliseconds.

    Args:
        load: a load name or a probe-load object (see the module docstring).
        percentile: 0 < percentile <= 100, e.g. 99 or 99.9.
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Returns:
        The percentile in ms (3 decimals).

    Raises:
        ConfigError: bad percentile, unknown load name or bad load options.
        LabError: the load recorded no request (there is no latency to report).
    """
    if not isinstance(percentile, int | float) or not 0 < percentile <= 100:
        raise ConfigError(f"percentile: expected a number in (0, 100], got {percentile!r}")
    s = session.current(configuration)
    result = _load(s, load)
    if result.requests == 0:
        raise LabError(f"load {_name(load)!r} recorded no request: no latency percentile")
    value_us = result.histogram().get_value_at_percentile(float(percentile))
    return s.observe(f"p{percentile:g}_ms", _name(load), round(value_us / 1000.0, 3))


def response_flag_count(pod: str, flag: str, cluster: str | None = None,
                        configuration: dict[str, Any] | None = None) -> int:
    """Requests the pod's sidecar logged with response flag ``flag`` since the experiment
    started (Istio access log; ``"UF"`` also counts ``"UF,URX"``; ``"-"`` counts requests
    without any flag).

    Args:
        pod: a meshed pod (or its workload name), e.g. ``fortio-server-0``.
        flag: one Envoy response flag, e.g. ``UF``, ``UC``, ``URX``, ``UH``, ``NR``, or ``-``.
        cluster: only records of this upstream cluster, e.g.
            ``outbound|8080||fortio-server-l2.mark.svc.cluster.local`` or ``inbound|8080||``.
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Raises:
        ConfigError: the pod has no sidecar or does not exist.
    """
    s = session.current(configuration)
    count = 0
    for rec in s.run.records(s.env.pod(pod).name):
        flags = str(rec.get("response_flags") or "-")
        if cluster is not None and rec.get("upstream_cluster") != cluster:
            continue
        if flag == flags or flag in flags.split(","):
            count += 1
    return s.observe("flag", f"{pod}:{flag}", count, pod=pod, cluster=cluster)


def _tcp_stat_names() -> frozenset[str]:
    from meshlab.proxy.stats.tcp_stats import COUNTERS, GAUGES

    return frozenset(name for name, _ in COUNTERS + GAUGES)


def tcp_stats_value(pod: str, stat: str, cluster: str | None = None,
                    configuration: dict[str, Any] | None = None) -> int:
    """A ``tcp_stats`` counter or gauge from the pod sidecar's admin ``/stats``, summed over
    upstream clusters (``cluster.<name>;.tcp_stats.<stat>``) and listeners
    (``listener.<addr>.tcp_stats.<stat>``), or only one cluster's.

    Counters are cumulative since the sidecar started, as Envoy shows them; compare two
    readings (before/after) for a delta. Gauges (``cx_tx_unacked_segments``,
    ``cx_tx_unsent_bytes``) are current values. A stat never charged yet is 0.

    Args:
        pod: a meshed pod, e.g. ``fortio-server-0``.
        stat: e.g. ``cx_tx_retransmitted_segments`` (the counters/gauges of
            :mod:`meshlab.proxy.stats.tcp_stats`).
        cluster: only this upstream cluster, e.g.
            ``outbound|8080||fortio-server-l2.mark.svc.cluster.local``.
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Raises:
        ConfigError: unknown stat name, or the pod has no sidecar.
        LabError: the admin endpoint did not answer.
    """
    if stat not in _tcp_stat_names():
        raise ConfigError(f"stat: {stat!r} is not a tcp_stats counter or gauge "
                          f"(known: {', '.join(sorted(_tcp_stat_names()))})")
    s = session.current(configuration)
    total = 0
    for full, value in stat_lines(s.env.sidecar_admin(pod, stats_path("tcp_stats")), first=True):
        if full.endswith(f".tcp_stats.{stat}") and \
                (cluster is None or full == f"cluster.{cluster};.tcp_stats.{stat}"):
            total += int_value(value, strip=True) or 0
    return s.observe("tcp_stats", f"{pod}:{stat}", total, pod=pod, cluster=cluster)


def socket_state_count(pod: str, state: str, uid: int | None = None,
                       peer_port: int | None = None, local_port: int | None = None,
                       configuration: dict[str, Any] | None = None) -> int:
    """TCP sockets in ``state`` in the pod's network namespace (``ss -tanoie``).

    Args:
        pod: pod name, e.g. ``fortio-server-0``.
        state: as ``ss`` prints it: ``ESTAB``, ``FIN-WAIT-2``, ``CLOSE-WAIT``, ``TIME-WAIT``…
        uid: only sockets of this uid (1337: the sidecar's, as Istio runs it).
        peer_port: only sockets to this remote port.
        local_port: only sockets on this local port (e.g. 15001, the outbound capture).
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Raises:
        ConfigError: unknown state name or pod.
        CommandError: ``ss`` failed.
    """
    if state not in SS_STATES:
        raise ConfigError(f"state: {state!r} is not a socket state as ss prints it "
                          f"(known: {', '.join(sorted(SS_STATES))})")
    s = session.current(configuration)
    found = select(snapshot(s.env.pod_shell(pod)), state=state, uid=uid, peer_port=peer_port,
                   local_port=local_port)
    return s.observe("sockets", f"{pod}:{state}", len(found), pod=pod, uid=uid)
