"""Per-request HTTP/1.1 state machine of the sidecar, without I/O (ENVOY.md §1, §8, §9).

The asyncio layer parses bytes with h11, creates one :class:`HttpStream` per request, feeds it
events and executes the action (:mod:`~meshlab.proxy.http_actions`) each call returns. The
stream owns routing, retries, header rewriting, local replies, response flags, stats and the
access-log record.

Rules (event → phase → action)::

    request_complete   REQUEST              → CONNECTING   Connect | LocalReply(NR, UH)
    connected          CONNECTING           → WAITING      SendRequest
    connect_failed     CONNECTING           → BACKOFF      Backoff        (retry_on matches, retries left)
                                            → DONE         LocalReply UF  (+URX when retries exhausted)
    backoff_elapsed    BACKOFF              → CONNECTING   Connect (prefers a host not tried yet)
    upstream_reset     WAITING              → BACKOFF/DONE Backoff | LocalReply UC (503, 95 B)
    response_headers   WAITING              → RESPONDING   ForwardResponse (via_upstream, no flag)
    response_complete  RESPONDING           → DONE         -
    upstream_reset     RESPONDING           → DONE         ResetDownstream (UC, after_response_started)
    route_timeout      CONNECTING..WAITING  → DONE         LocalReply UT 504
    route_timeout      RESPONDING           → DONE         ResetDownstream (UT)
    downstream_closed  any but DONE         → DONE         Done (DC, code 0 if nothing was sent)

Istio specifics followed here (it plays istio-proxy, not plain Envoy): the default outbound retry
policy is ``num_retries 2`` on ``connect-failure,refused-stream,unavailable,cancelled`` (503
excluded; :mod:`~meshlab.proxy.http_retry`); HTTP/1.0 is refused with 426 as Envoy does without
``accept_http_10``. Header rewriting lives in :mod:`~meshlab.proxy.http_headers`.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from meshlab.proxy.accesslog import AccessRecord, format_address
from meshlab.proxy.config import RetrySettings
from meshlab.proxy.flags import (
    DOWNSTREAM_DISCONNECT_DETAILS,
    NO_HEALTHY_UPSTREAM,
    NO_ROUTE,
    UPSTREAM_TIMEOUT,
    VIA_UPSTREAM,
    Flag,
    LocalReply,
    ResetReason,
    ResponseFlags,
    downstream_protocol_error,
    upstream_reset_after_start_details,
    upstream_reset_reply,
)
from meshlab.proxy.http_actions import (
    Action,
    Backoff,
    Connect,
    Done,
    ForwardResponse,
    ResetDownstream,
    SendLocalReply,
    SendRequest,
)
from meshlab.proxy.http_headers import (
    RequestHead,
    local_reply_response,
    parse_request_head,
    rewrite_response,
    upstream_request,
)
from meshlab.proxy.http_retry import RetryState
from meshlab.proxy.metrics import DestinationService, PeerInfo, ProxyStats
from meshlab.proxy.router import Address, Cluster, Router


class Phase(enum.Enum):
    """Where a stream is in the rules table."""

    REQUEST = "request"
    CONNECTING = "connecting"
    BACKOFF = "backoff"
    WAITING = "waiting"
    RESPONDING = "responding"
    DONE = "done"


@dataclass
class StreamContext:
    """Per-connection facts a stream needs (built once per downstream connection).

    Attributes:
        cluster: routing decision for the connection's original destination.
        router: endpoint picker.
        stats: stat trees.
        own_peer: this pod's labels.
        connect_timeout_s: cluster connect timeout.
        route_timeout_s: route timeout, None = disabled (Istio default).
        retry: the route's retry policy, or None.
        downstream_local: original destination (``%DOWNSTREAM_LOCAL_ADDRESS%``).
        downstream_remote: the client address.
    """

    cluster: Cluster
    router: Router
    stats: ProxyStats
    own_peer: PeerInfo
    connect_timeout_s: float
    route_timeout_s: float | None
    retry: RetrySettings | None
    downstream_local: Address
    downstream_remote: Address
    rng: Callable[[], float] = field(default=random.random)
    clock: Callable[[], float] = field(default=time.monotonic)
    wall: Callable[[], float] = field(default=time.time)

    @property
    def direction(self) -> str:
        """``outbound`` or ``inbound``."""
        return self.cluster.direction

    @property
    def server_name(self) -> bytes:
        """HCM ``server_name`` Istio configures for this direction."""
        return b"istio-envoy" if self.cluster.direction == "inbound" else b"envoy"


class HttpStream:
    """One request/response exchange (see the module rules table)."""

    def __init__(self, ctx: StreamContext, request: h11.Request | None) -> None:
        self.ctx = ctx
        self.phase = Phase.REQUEST
        self.flags = ResponseFlags()
        self.start_wall_s = ctx.wall()
        self._start = ctx.clock()
        self._request_complete: float | None = None
        self._attempt_start = 0.0
        self.retry = RetryState(ctx.retry, ctx.rng)
        self.body = bytearray()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.response_code = 0
        self.details: str | None = None
        self.transport_failure: str | None = None
        self.upstream_host: Address | None = None
        self.upstream_local: Address | None = None
        self.upstream_service_time_ms: int | None = None
        self.peer: PeerInfo | None = None
        self._finished = False
        self.request = request
        unset: str | None = None  # request facts, set by _parse_request
        self.method = self.path = self.protocol = self.authority = unset
        self.user_agent = self.xff = self.request_id = unset
        self._head: RequestHead | None = None
        self.http = ctx.stats.http(ctx.cluster.http_stat_prefix)
        self.cluster_stats = ctx.stats.cluster(ctx.cluster.name)
        self.http.downstream_rq_total.inc()
        self.http.downstream_rq_http1_total.inc()
        self.http.downstream_rq_active.inc()
        if request is not None:
            self._parse_request(request)

    def _parse_request(self, request: h11.Request) -> None:
        ctx = self.ctx
        inbound = ctx.direction == "inbound"
        send_peer = ctx.own_peer if not inbound and ctx.cluster.service is not None else None
        head = parse_request_head(request, inbound=inbound, send_peer=send_peer)
        self._head = head
        self.method, self.path, self.protocol = head.method, head.path, head.protocol
        self.authority, self.user_agent, self.xff = head.authority, head.user_agent, head.xff
        self.request_id = head.request_id
        self.peer = head.peer

    # -- request side ---------------------------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        """Buffer request body bytes (``%BYTES_RECEIVED%`` counts body bytes)."""
        self.body += data
        self.bytes_received += len(data)

    def on_request_complete(self) -> Action:
        """The whole request is in: route it."""
        self._request_complete = self.ctx.clock()
        if self.protocol == "HTTP/1.0":
            return self.local_reply(LocalReply(426, "Upgrade Required", "http1.low_version",
                                               Flag.DPE, close_connection=True))
        if self.method == "CONNECT":  # no route has a connect_matcher
            self.http.no_route.inc()
            return self.local_reply(NO_ROUTE)
        self.http.rq_total.inc()
        return self._next_attempt()

    def _next_attempt(self) -> Action:
        endpoint = self.ctx.router.pick(self.ctx.cluster, self.retry.tried)
        if endpoint is None:
            self.cluster_stats.upstream_cx_none_healthy.inc()  # type: ignore[attr-defined]
            return self.local_reply(NO_HEALTHY_UPSTREAM, charge_cluster=True)
        attempt = self.retry.start_attempt(endpoint)
        self.upstream_host = endpoint
        self.phase = Phase.CONNECTING
        self._attempt_start = self.ctx.clock()
        return Connect(endpoint, self.ctx.cluster.bind_ip, self.ctx.connect_timeout_s, attempt)

    def on_connected(self, local_address: Address | None) -> Action:
        """A connection to the chosen endpoint is ready: build the upstream request."""
        self.upstream_local = local_address
        self.phase = Phase.WAITING
        self.cluster_stats.upstream_rq_total.inc()  # type: ignore[attr-defined]
        self.cluster_stats.upstream_rq_active.inc()
        assert self.request is not None and self._head is not None
        req = upstream_request(self.request, self._head, self.retry.attempt, len(self.body))
        return SendRequest(req, bytes(self.body))

    def on_connect_failed(self, reason: ResetReason, transport_failure: str = "") -> Action:
        """Connecting failed (refused, timeout, unreachable)."""
        self.transport_failure = transport_failure or None
        return self._on_reset(reason, transport_failure, before_request=True)

    def on_upstream_reset(self, reason: ResetReason, transport_failure: str = "", *,
                          before_request: bool = False) -> Action:
        """The upstream connection closed/reset or sent garbage while the stream used it."""
        if self.phase is Phase.RESPONDING:
            self.cluster_stats.upstream_rq_active.dec()
            self.flags.add(reason.flag)
            self.details = upstream_reset_after_start_details(reason, transport_failure)
            self.phase = Phase.DONE
            self.http.downstream_rq_tx_reset.inc()
            return ResetDownstream()
        if self.phase is Phase.WAITING:
            self.cluster_stats.upstream_rq_active.dec()
        return self._on_reset(reason, transport_failure, before_request=before_request)

    def _on_reset(self, reason: ResetReason, transport_failure: str, *,
                  before_request: bool) -> Action:
        delay_s = self.retry.retry_delay_s(reason, before_request=before_request)
        if delay_s is not None:
            self.cluster_stats.upstream_rq_retry.inc()  # type: ignore[attr-defined]
            self.phase = Phase.BACKOFF
            return Backoff(delay_s)
        if self.retry.exhausted:
            self.flags.add(Flag.URX)
            self.cluster_stats.upstream_rq_retry_limit_exceeded.inc()  # type: ignore[attr-defined]
        reply = upstream_reset_reply(reason, transport_failure,
                                     retried=self.retry.retries_done > 0)
        return self.local_reply(reply, charge_cluster=True)

    def on_backoff_elapsed(self) -> Action:
        """The retry backoff is over: next attempt."""
        return self._next_attempt()

    # -- response side --------------------------------------------------------------------------

    def on_response_headers(self, response: h11.Response) -> Action:
        """Upstream response headers arrived: rewrite and forward them."""
        now = self.ctx.clock()
        assert self._request_complete is not None
        service_time_ms = int((now - self._request_complete) * 1000)
        self.upstream_service_time_ms = service_time_ms
        self.response_code = response.status_code
        self.details = VIA_UPSTREAM
        self.phase = Phase.RESPONDING
        self.cluster_stats.charge_code(response.status_code)
        if self.retry.retries_done:
            self.cluster_stats.upstream_rq_retry_success.inc()  # type: ignore[attr-defined]
        outbound = self.ctx.direction == "outbound"
        rewritten, peer = rewrite_response(
            response, outbound=outbound, server_name=self.ctx.server_name,
            service_time_ms=service_time_ms,
            send_peer=None if outbound else self.ctx.own_peer, now_s=self.ctx.wall())
        if outbound:
            self.peer = peer
        return ForwardResponse(rewritten)

    def on_response_body(self, nbytes: int) -> None:
        """``nbytes`` of response body were written downstream."""
        self.bytes_sent += nbytes

    def on_response_complete(self) -> Action:
        """The upstream response ended and was written downstream."""
        self.cluster_stats.upstream_rq_active.dec()
        self.cluster_stats.upstream_rq_time.record((self.ctx.clock() - self._attempt_start) * 1000)
        self.phase = Phase.DONE
        return Done()

    def on_route_timeout(self) -> Action:
        """The route timeout (from request completion) fired."""
        self.cluster_stats.upstream_rq_timeout.inc()  # type: ignore[attr-defined]
        if self.phase in (Phase.WAITING, Phase.RESPONDING):
            self.cluster_stats.upstream_rq_active.dec()
        if self.phase is Phase.RESPONDING:
            self.flags.add(Flag.UT)
            self.phase = Phase.DONE
            return ResetDownstream()
        return self.local_reply(UPSTREAM_TIMEOUT, charge_cluster=True)

    def on_downstream_closed(self) -> Action:
        """The client went away before the response completed."""
        if self.phase in (Phase.WAITING, Phase.RESPONDING):
            self.cluster_stats.upstream_rq_active.dec()
            self.cluster_stats.upstream_rq_cancelled.inc()  # type: ignore[attr-defined]
        self.flags.add(Flag.DC)
        self.http.downstream_rq_rx_reset.inc()
        if self.phase is not Phase.RESPONDING:
            self.details = DOWNSTREAM_DISCONNECT_DETAILS
        self.phase = Phase.DONE
        return Done()

    def local_reply(self, reply: LocalReply, *, charge_cluster: bool = False) -> SendLocalReply:
        """Generate ``reply`` (sets status, flag and details)."""
        if reply.flag is not None:
            self.flags.add(reply.flag)
        self.response_code = reply.status
        self.details = reply.details
        if charge_cluster:
            self.cluster_stats.charge_code(reply.status)
        response, body = local_reply_response(reply, server_name=self.ctx.server_name,
                                              now_s=self.ctx.wall())
        self.bytes_sent += len(body)
        self.phase = Phase.DONE
        return SendLocalReply(response, body, reply.close_connection)

    # -- end ----------------------------------------------------------------------------------

    @property
    def duration_ms(self) -> int:
        """Milliseconds since the stream started."""
        return int((self.ctx.clock() - self._start) * 1000)

    def finish(self) -> AccessRecord:
        """Close the stream: update HCM and Istio stats and return the access-log record."""
        if self._finished:
            raise RuntimeError("stream already finished")
        self._finished = True
        duration_ms = self.duration_ms
        http = self.http
        http.downstream_rq_active.dec()
        if self.response_code:
            http.charge_code(self.response_code)
        http.downstream_rq_completed.inc()
        http.downstream_rq_time.record(duration_ms)
        self._record_istio(duration_ms)
        tf = self.transport_failure.replace(" ", "_") if self.transport_failure else None
        return AccessRecord(
            start_time_s=self.start_wall_s, route_name=self.ctx.cluster.route_name,
            method=self.method, path=self.path, protocol=self.protocol,
            response_code=self.response_code, response_flags=str(self.flags),
            response_code_details=self.details, connection_termination_details=None,
            upstream_transport_failure_reason=tf, bytes_received=self.bytes_received,
            bytes_sent=self.bytes_sent, duration_ms=duration_ms,
            upstream_service_time=(str(self.upstream_service_time_ms)
                                   if self.upstream_service_time_ms is not None else None),
            x_forwarded_for=self.xff, user_agent=self.user_agent, request_id=self.request_id,
            authority=self.authority, upstream_host=format_address(self.upstream_host),
            upstream_cluster=self.ctx.cluster.name,
            upstream_local_address=format_address(self.upstream_local),
            downstream_local_address=format_address(self.ctx.downstream_local),
            downstream_remote_address=format_address(self.ctx.downstream_remote))

    def _record_istio(self, duration_ms: int) -> None:
        ctx = self.ctx
        c = ctx.cluster
        peer = self.peer or PeerInfo()
        if ctx.direction == "outbound":
            reporter, source, dest, policy = "source", ctx.own_peer, peer, "unknown"
            if c.service is None:
                svc = DestinationService(self.authority or c.name, c.name, "unknown")
            else:
                svc = DestinationService(c.destination_service, c.destination_service_name,
                                         c.destination_service_namespace)
        else:
            reporter, source, dest, policy = "destination", peer, ctx.own_peer, "none"
            svc = DestinationService(c.destination_service if c.service else
                                     (self.authority or "unknown").split(":")[0],
                                     c.destination_service_name if c.service else "unknown",
                                     c.destination_service_namespace)
        protocol = "grpc" if c.protocol == "grpc" else "http"
        tags = ctx.stats.istio.labels(reporter, source, dest, svc, protocol, self.response_code,
                                      str(self.flags), policy)
        ctx.stats.istio.record_request(tags, duration_ms, self.bytes_received, self.bytes_sent)

    def __repr__(self) -> str:
        return (f"HttpStream({self.method} {self.path} phase={self.phase.value} "
                f"attempt={self.retry.attempt} code={self.response_code} flags={self.flags})")


def protocol_error_stream(ctx: StreamContext, status_hint: int) -> tuple[HttpStream, SendLocalReply]:
    """A stream for a request h11 could not parse (``DPE``), with its local reply.

    Args:
        ctx: the connection's context.
        status_hint: h11's ``error_status_hint`` (431 for oversized headers, else 400).
    """
    stream = HttpStream(ctx, None)
    stream.protocol = "HTTP/1.1"
    return stream, stream.local_reply(downstream_protocol_error(status_hint))
