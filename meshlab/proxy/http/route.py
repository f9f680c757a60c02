"""Effective timeouts and retry policy of a route and of one request (sans-IO; ENVOY.md §8, §9).

Sources, lowest to highest precedence:

1. Sidecar-wide defaults: ``connect_timeout_s`` (Istio 10 s), ``route_timeout_s`` (Istio 0 s =
   disabled), the default outbound retry (Istio: 2 retries on
   ``connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes``; inbound none).
2. The cluster's policy (DestinationRule ``connectTimeout``) and its route policy
   (VirtualService ``timeout`` and ``retries``, :mod:`meshlab.proxy.config.policy`); ``attempts: 0``
   removes the retry policy (Istio ``ConvertPolicy``).
3. Request headers the router consumes (``E:source/common/router/router.cc::finalTimeout``):
   ``x-envoy-upstream-rq-timeout-ms`` (0 disables the route timeout),
   ``x-envoy-upstream-rq-per-try-timeout-ms`` (ignored when not below the route timeout),
   ``x-envoy-max-retries``, ``x-envoy-retry-on`` (added to the route's conditions) and
   ``x-envoy-upstream-rq-timeout-alt-response`` (a timeout answers 204 instead of 504).
   The router strips all of them from the upstream request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meshlab.proxy.config.sidecar import RetrySettings, SidecarConfig
from meshlab.proxy.http.retry import settings_from_route
from meshlab.proxy.upstream.router import Cluster

TIMEOUT_MS = b"x-envoy-upstream-rq-timeout-ms"
PER_TRY_TIMEOUT_MS = b"x-envoy-upstream-rq-per-try-timeout-ms"
TIMEOUT_ALT_RESPONSE = b"x-envoy-upstream-rq-timeout-alt-response"
MAX_RETRIES = b"x-envoy-max-retries"
RETRY_ON = b"x-envoy-retry-on"
#: Request headers the router reads and removes.
CONSUMED_HEADERS = frozenset({TIMEOUT_MS, PER_TRY_TIMEOUT_MS, TIMEOUT_ALT_RESPONSE, MAX_RETRIES,
                              RETRY_ON})


@dataclass(frozen=True)
class RouteDefaults:
    """What a cluster's route gives every stream before request headers are read.

    Attributes:
        connect_timeout_s: upstream connect timeout.
        route_timeout_s: route timeout, None = disabled.
        retry: retry policy, None = no retries.
        max_request_bytes: the buffer filter's request body limit on this cluster's listener
            and port (:mod:`meshlab.proxy.config.http_filters`); None = no buffer filter.
    """

    connect_timeout_s: float
    route_timeout_s: float | None
    retry: RetrySettings | None
    max_request_bytes: int | None = None


def route_defaults(config: SidecarConfig, cluster: Cluster) -> RouteDefaults:
    """Combine sidecar defaults with the cluster and route policies (levels 1 and 2)."""
    outbound = cluster.direction == "outbound"
    retry = config.outbound_retry if outbound else config.inbound_retry
    rp = cluster.route_policy
    if rp.retry is not None:  # Istio ConvertPolicy: attempts 0 disables retries
        retry = (settings_from_route(rp.retry, retry.base_interval_ms if retry else 25.0)
                 if rp.retry.num_retries > 0 else None)
    connect = cluster.policy.connect_timeout_s or config.connect_timeout_s
    timeout = rp.timeout_s if rp.timeout_s is not None else config.route_timeout_s
    listener = config.ports.outbound if outbound else config.ports.inbound
    body = config.policies.max_request_bytes(listener, cluster.listener_port)
    return RouteDefaults(connect, timeout, retry, body)


@dataclass(frozen=True)
class RequestTimeouts:
    """Timeouts of one request.

    Attributes:
        timeout_s: route (global) timeout from request completion, None = disabled.
        per_try_timeout_s: per-attempt timeout from connection ready, None = none.
        alt_response: a timeout answers 204 with an empty body instead of 504.
    """

    timeout_s: float | None
    per_try_timeout_s: float | None
    alt_response: bool = False


def _ms(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        return None
    return ms / 1000.0 if ms >= 0 else None


def request_settings(envoy_headers: dict[bytes, bytes], route_timeout_s: float | None,
                     retry: RetrySettings | None) -> tuple[RequestTimeouts, RetrySettings | None]:
    """Apply the router's request-header overrides (level 3).

    Args:
        envoy_headers: the consumed ``x-envoy-*`` request headers (lower-case name → value).
        route_timeout_s: the route timeout (None = disabled).
        retry: the route's retry policy.

    Returns:
        (the request's timeouts, its retry policy).
    """
    timeout = route_timeout_s
    header_timeout = _ms(envoy_headers.get(TIMEOUT_MS))
    if header_timeout is not None:
        timeout = header_timeout or None
    per_try = retry.per_try_timeout_s if retry else None
    header_per_try = _ms(envoy_headers.get(PER_TRY_TIMEOUT_MS))
    if header_per_try is not None:
        per_try = header_per_try or None
    if per_try is not None and timeout is not None and per_try >= timeout:
        per_try = None
    max_retries = envoy_headers.get(MAX_RETRIES)
    retry_on = envoy_headers.get(RETRY_ON)
    if (max_retries is not None and max_retries.isdigit()) or retry_on:
        base = retry or RetrySettings(num_retries=1, retry_on=frozenset())
        if max_retries is not None and max_retries.isdigit():
            base = replace(base, num_retries=int(max_retries))
        if retry_on:
            extra = {c.strip() for c in retry_on.decode("latin-1").split(",") if c.strip()}
            base = replace(base, retry_on=base.retry_on | extra)
        retry = base
    return RequestTimeouts(timeout, per_try, TIMEOUT_ALT_RESPONSE in envoy_headers), retry
