"""Per-cluster and per-route traffic policy of the sidecar (sans-IO, frozen dataclasses).

These are the knobs Istio's DestinationRule, VirtualService and EnvoyFilter turn into Envoy
cluster / route / socket configuration (ENVOY.md §8). The local "istiod"
(:mod:`meshlab.envs.local.istiod`) translates the manifests into the ``policies`` object of
``sidecar.json`` (docs/CONTRACTS.md §1); :func:`parse_policies` validates it. Every default is
the value istio-proxy runs with when no DestinationRule/VirtualService applies.

``sidecar.json`` shape (all keys optional)::

    "policies": {
      "clusters": {"<cluster name>": {               # e.g. "outbound|8080||a.ns.svc.cluster.local"
          "connect_timeout_s": 10.0,                 # DR connectionPool.tcp.connectTimeout
          "tcp_keepalive": {"time_s": 7200, "interval_s": 75, "probes": 9},   # DR tcpKeepalive
          "http_idle_timeout_s": 3600.0,             # DR connectionPool.http.idleTimeout (pool)
          "max_requests_per_connection": 0,          # DR http.maxRequestsPerConnection, 0 = no limit
          "tcp_idle_timeout_s": 3600.0,              # TCP proxy idle_timeout (DR tcp.idleTimeout)
          "circuit_breakers": {"max_connections": N, "max_pending_requests": N,
                               "max_requests": N, "max_retries": N},
          "outlier_detection": {"consecutive_5xx": 5, "consecutive_gateway_failure": 0,
                                "interval_s": 10, "base_ejection_time_s": 30,
                                "max_ejection_percent": 10, "min_health_percent": 0},
          "socket_options": [{"level": 6, "name": 18, "int_value": 5000,
                              "state": "STATE_PREBIND"}]       # EnvoyFilter upstream options
      }},
      "routes": {"<cluster name>": {                 # the route whose destination is the cluster
          "timeout_s": null,                         # VS http[].timeout; null/0 = disabled
          "retry": {"num_retries": 2, "retry_on": "...", "per_try_timeout_s": null},
          "fault": {"abort": {"http_status": 503, "percent": 100.0},
                    "delay": {"fixed_delay_s": 1.0, "percent": 100.0}}
      }},
      "listener_socket_options": [{"level": 6, "name": 18, "int_value": 5000,
                                   "state": "STATE_LISTENING"}], # both capture listeners
      "listeners": {"15001": {"socket_options": [...],          # one capture listener only
                              "http_filters": [...]}}   # EnvoyFilter HTTP_FILTER: buffer
    }

The local istiod writes ``listeners`` for EnvoyFilter LISTENER patches (``SIDECAR_OUTBOUND`` →
15001, ``SIDECAR_INBOUND`` → 15006); ``listener_socket_options`` applies to both; ``http_filters`` holds the buffer filters
EnvoyFilter ``HTTP_FILTER`` patches insert (:mod:`.http_filters`).
In ``outlier_detection`` a threshold of 0 disables that detector (Istio sets
``enforcing_*`` to 0 then). In ``retry.retry_on`` numeric entries are retriable status codes
(Istio ``parseRetryOn``).

Errors: :class:`~meshlab.errors.ConfigError` naming the dotted field, e.g.
``policies.clusters["outbound|8080||a"].outlier_detection.interval_s: expected a number >= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshlab.errors import ConfigError
from meshlab.proxy.config.http_filters import BufferFilter, max_request_bytes, parse_http_filters
from meshlab.proxy.fields import as_choice, as_int, as_num, as_object, check_known

#: Istio's circuit-breaker thresholds on every cluster: 2^32-1 (``applyConnectionPool``).
ISTIO_UNLIMITED = 4294967295

#: TCP_USER_TIMEOUT as Envoy's generic SocketOption (IPPROTO_TCP=6, TCP_USER_TIMEOUT=18).
SOL_TCP = 6
TCP_USER_TIMEOUT = 18

SOCKET_STATES = ("STATE_PREBIND", "STATE_BOUND", "STATE_LISTENING")


@dataclass(frozen=True)
class SocketOption:
    """Envoy ``core.v3.SocketOption`` with an integer value.

    Attributes:
        level: setsockopt level (6 = IPPROTO_TCP, 1 = SOL_SOCKET).
        name: option number (18 = TCP_USER_TIMEOUT).
        int_value: the value (ms for TCP_USER_TIMEOUT).
        state: when Envoy applies it: ``STATE_PREBIND`` (before connect/bind),
            ``STATE_BOUND`` or ``STATE_LISTENING`` (listener sockets).
    """

    level: int
    name: int
    int_value: int
    state: str = "STATE_PREBIND"


@dataclass(frozen=True)
class TcpKeepalive:
    """Envoy ``core.v3.TcpKeepalive``; ``None`` fields use the OS value (Linux 9 / 7200 s / 75 s)."""

    probes: int | None = None
    time_s: int | None = None
    interval_s: int | None = None


@dataclass(frozen=True)
class CircuitBreakers:
    """Default-priority thresholds (Envoy ``circuit_breakers``); Istio sets all to 2^32-1."""

    max_connections: int = ISTIO_UNLIMITED
    max_pending_requests: int = ISTIO_UNLIMITED
    max_requests: int = ISTIO_UNLIMITED
    max_retries: int = ISTIO_UNLIMITED


@dataclass(frozen=True)
class OutlierDetection:
    """Envoy ``OutlierDetection`` as Istio configures it from a DestinationRule.

    Defaults are Envoy's (ENVOY.md §8). ``consecutive_gateway_failure`` 0 disables that detector;
    ``min_health_percent`` is Istio's ``healthy_panic_threshold`` (0 disables panic mode).
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 0
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


@dataclass(frozen=True)
class ClusterPolicy:
    """Cluster-level settings (DestinationRule trafficPolicy / EnvoyFilter cluster patch).

    Attributes:
        connect_timeout_s: None = the sidecar-wide ``connect_timeout_s`` (Istio 10 s).
        tcp_keepalive: None = keepalive off (Istio default).
        http_idle_timeout_s: upstream HTTP pool idle timeout (Envoy default 1 h).
        max_requests_per_connection: 0 = unlimited.
        tcp_idle_timeout_s: TCP proxy ``idle_timeout`` (Envoy default 1 h; 0 disables).
        circuit_breakers: thresholds (Istio: all 2^32-1).
        outlier_detection: None = no outlier detection (Istio default).
        socket_options: applied to upstream sockets.
    """

    connect_timeout_s: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    http_idle_timeout_s: float = 3600.0
    max_requests_per_connection: int = 0
    tcp_idle_timeout_s: float = 3600.0
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    outlier_detection: OutlierDetection | None = None
    socket_options: tuple[SocketOption, ...] = ()


@dataclass(frozen=True)
class FaultAbort:
    """VirtualService ``fault.abort`` → Envoy fault filter abort (flag ``FI``)."""

    http_status: int
    percent: float = 100.0


@dataclass(frozen=True)
class FaultDelay:
    """VirtualService ``fault.delay`` → Envoy fault filter fixed delay (flag ``DI``)."""

    fixed_delay_s: float
    percent: float = 100.0


@dataclass(frozen=True)
class RouteRetry:
    """VirtualService ``retries`` (``attempts``, ``retryOn``, ``perTryTimeout``)."""

    num_retries: int
    retry_on: frozenset[str]
    per_try_timeout_s: float | None = None


@dataclass(frozen=True)
class RoutePolicy:
    """Route-level settings from a VirtualService.

    Attributes:
        timeout_s: route timeout; None = disabled (Istio's ``0s`` default) or the sidecar-wide
            ``route_timeout_s``.
        retry: overrides the sidecar's default outbound retry policy; None = keep default.
        abort: fault injection abort, or None.
        delay: fault injection delay, or None.
    """

    timeout_s: float | None = None
    retry: RouteRetry | None = None
    abort: FaultAbort | None = None
    delay: FaultDelay | None = None


@dataclass(frozen=True)
class Policies:
    """All policies of one sidecar, keyed by Envoy cluster name."""

    clusters: dict[str, ClusterPolicy] = field(default_factory=dict)
    routes: dict[str, RoutePolicy] = field(default_factory=dict)
    listener_socket_options: tuple[SocketOption, ...] = ()
    listeners: dict[int, tuple[SocketOption, ...]] = field(default_factory=dict)
    http_filters: dict[int, tuple[BufferFilter, ...]] = field(default_factory=dict)

    def listener_options(self, port: int) -> tuple[SocketOption, ...]:
        """Socket options of the capture listener on ``port`` (15001 / 15006)."""
        return self.listener_socket_options + self.listeners.get(port, ())

    def max_request_bytes(self, listener: int, port: int) -> int | None:
        """Request body limit of the buffer filters on capture listener ``listener`` (15001 /
        15006) for HTTP port ``port``; None = no buffer filter (bodies stream, no 413)."""
        filters = self.http_filters.get(listener)
        return max_request_bytes(filters, port) if filters else None

    def cluster(self, name: str) -> ClusterPolicy:
        """The policy of cluster ``name`` (defaults when none is configured)."""
        return self.clusters.get(name, DEFAULT_CLUSTER_POLICY)

    def route(self, cluster_name: str) -> RoutePolicy:
        """The policy of the route to ``cluster_name`` (defaults when none is configured)."""
        return self.routes.get(cluster_name, DEFAULT_ROUTE_POLICY)


DEFAULT_CLUSTER_POLICY = ClusterPolicy()
DEFAULT_ROUTE_POLICY = RoutePolicy()


# -- parsing ------------------------------------------------------------------------------------

def _opt_timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    return as_num(value, where) or None


def _socket_options(value: Any, where: str, default_state: str) -> tuple[SocketOption, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list")
    out = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        o = as_object(item, w)
        check_known(o, {"level", "name", "int_value", "state"}, w)
        for key in ("level", "name", "int_value"):
            if key not in o:
                raise ConfigError(f"{w}.{key}: required field is missing")
        state = as_choice(o.get("state", default_state), f"{w}.state", SOCKET_STATES)
        out.append(SocketOption(as_int(o["level"], f"{w}.level"), as_int(o["name"], f"{w}.name"),
                                as_int(o["int_value"], f"{w}.int_value"), state))
    return tuple(out)


def _dataclass_of(cls: type, value: Any, where: str, kinds: dict[str, str]) -> Any:
    """Build ``cls`` from an object whose keys are ``kinds`` (key → "int"/"num"/"opt_int")."""
    o = as_object(value, where)
    check_known(o, set(kinds), where)
    kwargs: dict[str, Any] = {}
    for key, kind in kinds.items():
        if key not in o:
            continue
        v = o[key]
        if kind == "opt_int" and v is None:
            kwargs[key] = None
        elif kind in ("int", "opt_int"):
            kwargs[key] = as_int(v, f"{where}.{key}")
        elif kind == "percent":
            kwargs[key] = as_num(v, f"{where}.{key}", maximum=100.0)
        else:
            kwargs[key] = as_num(v, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def _cluster_policy(value: Any, where: str) -> ClusterPolicy:
    o = as_object(value, where)
    check_known(o, set(ClusterPolicy.__dataclass_fields__), where)
    kw: dict[str, Any] = {}
    if "connect_timeout_s" in o and o["connect_timeout_s"] is not None:
        kw["connect_timeout_s"] = as_num(o["connect_timeout_s"], f"{where}.connect_timeout_s",
                                       minimum=0.001)
    if o.get("tcp_keepalive") is not None:
        kw["tcp_keepalive"] = _dataclass_of(TcpKeepalive, o["tcp_keepalive"],
                                            f"{where}.tcp_keepalive",
                                            dict.fromkeys(("probes", "time_s", "interval_s"),
                                                          "opt_int"))
    for key in ("http_idle_timeout_s", "tcp_idle_timeout_s"):
        if key in o:
            kw[key] = as_num(o[key], f"{where}.{key}")
    if "max_requests_per_connection" in o:
        kw["max_requests_per_connection"] = as_int(o["max_requests_per_connection"],
                                                 f"{where}.max_requests_per_connection")
    if "circuit_breakers" in o:
        kw["circuit_breakers"] = _dataclass_of(
            CircuitBreakers, o["circuit_breakers"], f"{where}.circuit_breakers",
            dict.fromkeys(CircuitBreakers.__dataclass_fields__, "int"))
    if o.get("outlier_detection") is not None:
        kinds = {"consecutive_5xx": "int", "consecutive_gateway_failure": "int",
                 "interval_s": "num", "base_ejection_time_s": "num",
                 "max_ejection_percent": "percent", "min_health_percent": "percent"}
        od = _dataclass_of(OutlierDetection, o["outlier_detection"],
                           f"{where}.outlier_detection", kinds)
        kw["outlier_detection"] = OutlierDetection(
            **{**od.__dict__, "max_ejection_percent": int(od.max_ejection_percent),
               "min_health_percent": int(od.min_health_percent)})
    if "socket_options" in o:
        kw["socket_options"] = _socket_options(o["socket_options"], f"{where}.socket_options",
                                               "STATE_PREBIND")
    return ClusterPolicy(**kw)


def _route_policy(value: Any, where: str) -> RoutePolicy:
    o = as_object(value, where)
    check_known(o, {"timeout_s", "retry", "fault"}, where)
    kw: dict[str, Any] = {"timeout_s": _opt_timeout(o.get("timeout_s"), f"{where}.timeout_s")}
    if o.get("retry") is not None:
        r = as_object(o["retry"], f"{where}.retry")
        check_known(r, {"num_retries", "retry_on", "per_try_timeout_s"}, f"{where}.retry")
        retry_on = r.get("retry_on", "")
        if not isinstance(retry_on, str):
            raise ConfigError(f"{where}.retry.retry_on: expected a string, got {retry_on!r}")
        kw["retry"] = RouteRetry(
            num_retries=as_int(r.get("num_retries", 2), f"{where}.retry.num_retries"),
            retry_on=frozenset(c.strip() for c in retry_on.split(",") if c.strip()),
            per_try_timeout_s=_opt_timeout(r.get("per_try_timeout_s"),
                                           f"{where}.retry.per_try_timeout_s"))
    if o.get("fault") is not None:
        f = as_object(o["fault"], f"{where}.fault")
        check_known(f, {"abort", "delay"}, f"{where}.fault")
        if f.get("abort") is not None:
            kw["abort"] = _dataclass_of(FaultAbort, f["abort"], f"{where}.fault.abort",
                                        {"http_status": "int", "percent": "percent"})
            if not 200 <= kw["abort"].http_status <= 599:
                raise ConfigError(f"{where}.fault.abort.http_status: expected 200..599, "
                                  f"got {kw['abort'].http_status}")
        if f.get("delay") is not None:
            kw["delay"] = _dataclass_of(FaultDelay, f["delay"], f"{where}.fault.delay",
                                        {"fixed_delay_s": "num", "percent": "percent"})
    return RoutePolicy(**kw)


def parse_policies(value: Any, where: str = "policies") -> Policies:
    """Validate the ``policies`` object of ``sidecar.json`` (shape in the module docstring).

    Args:
        value: the decoded JSON value, or None (→ no policies, Istio defaults everywhere).
        where: dotted path used in error messages.

    Returns:
        :class:`Policies`.

    Raises:
        ConfigError: a field is unknown, missing or out of range; the message names it.
    """
    if value is None:
        return Policies()
    o = as_object(value, where)
    check_known(o, {"clusters", "routes", "listener_socket_options", "listeners"}, where)
    clusters = {name: _cluster_policy(doc, f'{where}.clusters["{name}"]')
                for name, doc in as_object(o.get("clusters", {}), f"{where}.clusters").items()}
    routes = {name: _route_policy(doc, f'{where}.routes["{name}"]')
              for name, doc in as_object(o.get("routes", {}), f"{where}.routes").items()}
    listener_opts = _socket_options(o.get("listener_socket_options", []),
                                    f"{where}.listener_socket_options", "STATE_LISTENING")
    listeners: dict[int, tuple[SocketOption, ...]] = {}
    http_filters: dict[int, tuple[BufferFilter, ...]] = {}
    for port, doc in as_object(o.get("listeners", {}), f"{where}.listeners").items():
        w = f'{where}.listeners["{port}"]'
        if not str(port).isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{w}: expected a port number as key")
        check_known(as_object(doc, w), {"socket_options", "http_filters"}, w)
        listeners[int(port)] = _socket_options(doc.get("socket_options", []),
                                               f"{w}.socket_options", "STATE_PREBIND")
        if doc.get("http_filters"):
            http_filters[int(port)] = parse_http_filters(doc["http_filters"],
                                                         f"{w}.http_filters")
    return Policies(clusters=clusters, routes=routes, listener_socket_options=listener_opts,
                    listeners=listeners, http_filters=http_filters)
