"""What a finished HTTP stream reports: its access-log record and Istio metrics (sans-IO).

ENVOY.md §2 (access-log fields) and §4 (``istio_requests_total`` labels). Fields for local
replies: ``response_code_details`` is the reply's details; ``upstream_transport_failure_reason``
is the connect error with spaces as ``_``; ``connection_termination_details`` stays unset (``-``)
because only network filters (RBAC, …) set it, never the HCM or the router.
"""

from __future__ import annotations

from typing import Any, Protocol

from meshlab.proxy.accesslog import AccessRecord, format_address
from meshlab.proxy.flags import ResponseFlags
from meshlab.proxy.http.context import StreamContext
from meshlab.proxy.stats.metrics import DestinationService, PeerInfo
from meshlab.proxy.upstream.router import Address


class HttpStream(Protocol):
    """What a finished :class:`meshlab.proxy.http.core.HttpStream` reports from."""

    ctx: StreamContext
    http: Any  # HttpStats of the connection manager
    flags: ResponseFlags
    start_wall_s: float
    method: str | None
    path: str | None
    protocol: str | None
    authority: str | None
    user_agent: str | None
    xff: str | None
    request_id: str | None
    response_code: int
    details: str | None
    transport_failure: str | None
    bytes_received: int
    bytes_sent: int
    upstream_host: Address | None
    upstream_local: Address | None
    upstream_service_time_ms: int | None
    peer: PeerInfo | None


def close_stream(stream: HttpStream, duration_ms: int) -> AccessRecord:
    """HCM end-of-stream stats (``downstream_rq_*``), Istio metrics, then the log record."""
    http = stream.http
    http.downstream_rq_active.dec()
    if stream.response_code:
        http.charge_code(stream.response_code)
    http.downstream_rq_completed.inc()
    http.downstream_rq_time.record(duration_ms)
    record_istio(stream, duration_ms)
    return access_record(stream, duration_ms)


def access_record(stream: HttpStream, duration_ms: int) -> AccessRecord:
    """The access-log record of ``stream`` (its ``%...%`` operator values)."""
    ctx = stream.ctx
    tf = stream.transport_failure.replace(" ", "_") if stream.transport_failure else None
    ust = stream.upstream_service_time_ms
    return AccessRecord(
        start_time_s=stream.start_wall_s, route_name=ctx.cluster.route_name,
        method=stream.method, path=stream.path, protocol=stream.protocol,
        response_code=stream.response_code, response_flags=str(stream.flags),
        response_code_details=stream.details, connection_termination_details=None,
        upstream_transport_failure_reason=tf, bytes_received=stream.bytes_received,
        bytes_sent=stream.bytes_sent, duration_ms=duration_ms,
        upstream_service_time=str(ust) if ust is not None else None,
        x_forwarded_for=stream.xff, user_agent=stream.user_agent, request_id=stream.request_id,
        authority=stream.authority, upstream_host=format_address(stream.upstream_host),
        upstream_cluster=(None if ctx.cluster.route_name == "block_all"  # direct reply
                          else ctx.cluster.name),
        upstream_local_address=format_address(stream.upstream_local),
        downstream_local_address=format_address(ctx.downstream_local),
        downstream_remote_address=format_address(ctx.downstream_remote))


def record_istio(stream: HttpStream, duration_ms: int) -> None:
    """Count ``stream`` in the Istio standard metrics (reporter by direction)."""
    ctx = stream.ctx
    c = ctx.cluster
    peer = stream.peer or PeerInfo()
    if ctx.direction == "outbound":
        reporter, source, dest, policy = "source", ctx.own_peer, peer, "unknown"
        if c.service is None:
            svc = DestinationService(stream.authority or c.name, c.name, "unknown")
        else:
            svc = DestinationService(c.destination_service, c.destination_service_name,
                                     c.destination_service_namespace)
    else:
        reporter, source, dest, policy = "destination", peer, ctx.own_peer, "none"
        svc = DestinationService(c.destination_service if c.service else
                                 (stream.authority or "unknown").split(":")[0],
                                 c.destination_service_name if c.service else "unknown",
                                 c.destination_service_namespace)
    protocol = "grpc" if c.protocol == "grpc" else "http"
    tags = ctx.stats.istio.labels(reporter, source, dest, svc, protocol, stream.response_code,
                                  str(stream.flags), policy)
    ctx.stats.istio.record_request(tags, duration_ms, stream.bytes_received, stream.bytes_sent)
