"""Per-request HTTP/1.1 state machine of the sidecar, without I/O (ENVOY.md §1, §8, §9).

The asyncio layer parses bytes (:mod:`~meshlab.proxy.http.codec`), creates one :class:`HttpStream` per request, feeds it
events and executes the action (:mod:`~meshlab.proxy.http.actions`) each call returns. The
stream owns fault injection, routing, retries, header rewriting, local replies, response flags
and stats; :mod:`~meshlab.proxy.http.record` turns it into the access-log record.

Rules (event → phase → action)::

    request_complete   REQUEST              → FAULT_DELAY  DelayRequest   (VS fault delay: DI)
                                            → DONE         LocalReply(NR, FI abort, 426)
                                            → CONNECTING   Connect | LocalReply UH
    fault_delay_elapsed FAULT_DELAY         → DONE/CONNECTING  LocalReply FI | Connect
    connected          CONNECTING           → WAITING      SendRequest    (per-try timer starts)
    connect_failed     CONNECTING           → BACKOFF      Backoff        (retry_on matches, retries left)
                                            → DONE         LocalReply UF  (+URX when retries exhausted)
    backoff_elapsed    BACKOFF              → CONNECTING   Connect (prefers a host not tried yet)
    upstream_reset     WAITING              → BACKOFF/DONE Backoff | LocalReply UC 503 (95 B) / UPE 502
    response_headers   WAITING              → BACKOFF      Backoff        (status retriable, retries left)
                                            → RESPONDING   ForwardResponse (via_upstream; +URX if exhausted)
    response_complete  RESPONDING           → DONE         -
    upstream_reset     RESPONDING           → DONE         ResetDownstream (UC, after_response_started)
    per_try_timeout    WAITING              → BACKOFF/DONE Backoff | LocalReply UT 504 upstream_per_try_timeout
    route_timeout      CONNECTING..WAITING  → DONE         LocalReply UT 504 response_timeout (204 alt)
    *_timeout          RESPONDING           → DONE         ResetDownstream (UT)
    downstream_closed  any but DONE         → DONE         Done (DC, code 0 if nothing was sent)

Istio specifics (it plays istio-proxy): default outbound retry 2 × ``connect-failure,…`` (503
excluded) unless a VS sets ``retries`` (:mod:`~meshlab.proxy.http.retry`, :mod:`~meshlab.proxy.http.route`); VS ``fault``
acts on the client side (:mod:`~meshlab.proxy.http.fault_filter`); HTTP/1.0 gets 426 (no ``accept_http_10``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h11

from meshlab.proxy.accesslog import AccessRecord
from meshlab.proxy.flags import (
    DOWNSTREAM_DISCONNECT_DETAILS,
    NO_HEALTHY_UPSTREAM,
    NO_ROUTE,
    VIA_UPSTREAM,
    Flag,
    LocalReply,
    ResetReason,
    ResponseFlags,
    downstream_protocol_error,
    upstream_reset_after_start_details,
    upstream_reset_reply,
    upstream_timeout_reply,
)
from meshlab.proxy.http import fault_filter
from meshlab.proxy.http.actions import (
    Action,
    Backoff,
    Connect,
    DelayRequest,
    Done,
    ForwardResponse,
    ResetDownstream,
    SendLocalReply,
    SendRequest,
)
from meshlab.proxy.http.context import Phase, StreamContext
from meshlab.proxy.http.headers import (
    DownstreamRequest,
    RequestHead,
    local_reply_response,
    parse_request_head,
    rewrite_response,
    upstream_request,
)
from meshlab.proxy.http.record import close_stream
from meshlab.proxy.http.retry import RetryState
from meshlab.proxy.http.route import RequestTimeouts, request_settings
from meshlab.proxy.stats.metrics import PeerInfo
from meshlab.proxy.upstream.router import Address

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.proxy.upstream.circuit import ClusterResources

__all__ = ["HttpStream", "Phase", "StreamContext", "protocol_error_stream"]


class HttpStream:
    """One request/response exchange (see the module rules table).

    Attributes read by the I/O layer: :attr:`timeouts` (route and per-try timeouts of this
    request) and :attr:`phase`.
    """

    __slots__ = ("_attempt_start", "_finished", "_head", "_request_complete", "_start",
                 "authority", "body", "bytes_received", "bytes_sent", "cluster_stats", "ctx",
                 "details", "fault", "flags", "http", "limits", "method", "path", "peer", "phase",
                 "protocol", "request", "request_id", "response_code", "retry", "start_wall_s",
                 "timeouts", "transport_failure", "upstream_host", "upstream_local",
                 "upstream_service_time_ms", "user_agent", "xff")

    def __init__(self, ctx: StreamContext, request: DownstreamRequest | None) -> None:
        self.ctx = ctx
        self.phase = Phase.REQUEST
        self.flags = ResponseFlags()
        self.start_wall_s = ctx.wall()
        self._start = ctx.clock()
        self._request_complete: float | None = None
        self._attempt_start = 0.0
        self.retry = RetryState(ctx.retry, ctx.rng)
        self.timeouts = RequestTimeouts(ctx.route_timeout_s, None)
        self.limits: ClusterResources | None = None  # circuit breakers, set by the I/O layer
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
        self.fault = fault_filter.FaultState(ctx.cluster.route_policy, ctx.rng, ctx.stats.store,
                                             self.http.prefix)
        self.http.downstream_rq_total.inc()
        self.http.downstream_rq_http1_total.inc()
        self.http.downstream_rq_active.inc()
        if request is not None:
            self._parse_request(request)

    def _parse_request(self, request: DownstreamRequest) -> None:
        ctx = self.ctx
        inbound = ctx.direction == "inbound"
        send_peer = ctx.own_peer if not inbound and ctx.cluster.service is not None else None
        head = parse_request_head(request, inbound=inbound, send_peer=send_peer)
        self._head = head
        self.method, self.path, self.protocol = head.method, head.path, head.protocol
        self.authority, self.user_agent, self.xff = head.authority, head.user_agent, head.xff
        self.request_id = head.request_id
        self.peer = head.peer
        self.timeouts, policy = request_settings(head.envoy, ctx.route_timeout_s, ctx.retry)
        self.retry = RetryState(policy, ctx.rng)

    # -- request side ---------------------------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        """Buffer request body bytes (``%BYTES_RECEIVED%`` counts body bytes)."""
        self.body += data
        self.bytes_received += len(data)

    def on_request_complete(self) -> Action:
        """The whole request is in: apply faults, then route it."""
        self._request_complete = self.ctx.clock()
        if self.protocol != "HTTP/1.1":  # Envoy's codec treats every other version as 1.0
            return self.local_reply(LocalReply(426, "Upgrade Required", "http1.low_version",
                                               Flag.DPE, close_connection=True))
        if self.method == "CONNECT":  # no route has a connect_matcher
            self.http.no_route.inc()
            return self.local_reply(NO_ROUTE)
        delay_s = self.fault.delay_s()
        if delay_s is not None:
            self.flags.add(Flag.DI)
            self.phase = Phase.FAULT_DELAY
            return DelayRequest(delay_s)
        return self._after_delay()

    def on_fault_delay_elapsed(self) -> Action:
        """The fault filter's delay is over: maybe abort, else route."""
        self.fault.end_delay()
        return self._after_delay()

    def _after_delay(self) -> Action:
        abort = self.fault.abort_reply()
        if abort is not None:
            return self.local_reply(abort)
        self.http.rq_total.inc()  # the router starts here (after the fault filter)
        self._request_complete = self.ctx.clock()  # route timeout / service time origin
        if self.ctx.cluster.route_name == "block_all":  # Istio REGISTRY_ONLY (I:route.go)
            self.http.counter("rq_direct_response").inc()
            return self.local_reply(LocalReply(502, "", "direct_response", None))
        return self._next_attempt()

    def _next_attempt(self) -> Action:
        endpoint = self.ctx.router.pick(self.ctx.cluster, self.retry.tried)
        if endpoint is None:
            self.cluster_stats.upstream_cx_none_healthy.inc()
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
        self.cluster_stats.upstream_rq_total.inc()
        self.cluster_stats.upstream_rq_active.inc()
        assert self.request is not None and self._head is not None
        req = upstream_request(self.request, self._head, self.retry.attempt, len(self.body))
        return SendRequest(req, bytes(self.body))

    def on_connect_failed(self, reason: ResetReason, transport_failure: str = "") -> Action:
        """Connecting failed (refused, timeout, unreachable, overflow)."""
        self.transport_failure = transport_failure or None
        self.ctx.router.outliers.report_reset(self.ctx.cluster, self.upstream_host, reason,
                                              self.ctx.stats)
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
        self.ctx.router.outliers.report_reset(self.ctx.cluster, self.upstream_host, reason,
                                              self.ctx.stats)
        return self._on_reset(reason, transport_failure, before_request=before_request)

    def _retry_or(self, delay_s: float | None) -> Backoff | None:
        """Backoff when a retry was granted; else note ``URX`` if retries ran out.

        A granted retry also needs a circuit-breaker ``max_retries`` slot; without one it is
        skipped with ``UO`` (Envoy ``RetryStatus::NoOverflow``; :meth:`RetryState.take_slot`).
        """
        delay_s = self.retry.take_slot(delay_s, self.limits)
        if self.retry.overflowed:
            self.flags.add(Flag.UO)
        if delay_s is not None:
            self.cluster_stats.upstream_rq_retry.inc()
            self.phase = Phase.BACKOFF
            return Backoff(delay_s)
        if self.retry.exhausted:
            self.flags.add(Flag.URX)
            self.cluster_stats.upstream_rq_retry_limit_exceeded.inc()
        return None

    def _on_reset(self, reason: ResetReason, transport_failure: str, *,
                  before_request: bool) -> Action:
        backoff = self._retry_or(self.retry.retry_delay_s(reason, before_request=before_request))
        if backoff is not None:
            return backoff
        reply = upstream_reset_reply(reason, transport_failure,
                                     retried=self.retry.retries_done > 0)
        return self.local_reply(reply, charge_cluster=True)

    def on_backoff_elapsed(self) -> Action:
        """The retry backoff is over: next attempt."""
        return self._next_attempt()

    # -- response side --------------------------------------------------------------------------

    def on_response_headers(self, response: h11.Response) -> Action:
        """Upstream response headers arrived: retry on a retriable status, else forward them."""
        code = response.status_code
        self.ctx.router.outliers.report(self.ctx.cluster, self.upstream_host, code,
                                        self.ctx.stats)
        delay_s = self.retry.status_retry_delay_s(code)
        if delay_s is not None:  # the I/O layer resets this attempt's connection
            self.cluster_stats.charge_code(code, retry=True, host=self.upstream_host)
            self.cluster_stats.upstream_rq_active.dec()
            backoff = self._retry_or(delay_s)
            assert backoff is not None
            return backoff
        self._retry_or(None)
        now = self.ctx.clock()
        assert self._request_complete is not None
        service_time_ms = int((now - self._request_complete) * 1000)
        self.upstream_service_time_ms = service_time_ms
        self.response_code = code
        self.details = VIA_UPSTREAM
        self.phase = Phase.RESPONDING
        self.cluster_stats.charge_code(code, host=self.upstream_host)
        if self.retry.retries_done:
            self.cluster_stats.upstream_rq_retry_success.inc()
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

    def _timed_out(self) -> Action | None:
        """Common part of both timeouts; returns the action when the response already started."""
        if self.upstream_host is not None:
            self.cluster_stats.host(self.upstream_host).rq_timeout += 1
        if self.phase is Phase.WAITING:  # LocalOriginTimeout
            self.ctx.router.outliers.report(self.ctx.cluster, self.upstream_host, 504,
                                            self.ctx.stats)
        if self.phase in (Phase.WAITING, Phase.RESPONDING):
            self.cluster_stats.upstream_rq_active.dec()
        if self.phase is Phase.RESPONDING:
            self.flags.add(Flag.UT)
            self.phase = Phase.DONE
            return ResetDownstream()
        return None

    def on_per_try_timeout(self) -> Action:
        """The attempt's per-try timeout (from connection ready) fired: retry or ``UT``."""
        self.cluster_stats.upstream_rq_per_try_timeout.inc()
        started = self._timed_out()
        if started is not None:
            return started
        backoff = self._retry_or(self.retry.retry_delay_s(ResetReason.LOCAL_RESET,
                                                          before_request=False))
        if backoff is not None:
            return backoff
        return self.local_reply(upstream_timeout_reply(
            per_try=True, alt_response=self.timeouts.alt_response), charge_cluster=True)

    def on_route_timeout(self) -> Action:
        """The route timeout (from request completion) fired."""
        self.cluster_stats.upstream_rq_timeout.inc()
        started = self._timed_out()
        if started is not None:
            return started
        return self.local_reply(upstream_timeout_reply(alt_response=self.timeouts.alt_response),
                                charge_cluster=True)

    def on_downstream_closed(self) -> Action:
        """The client went away before the response completed."""
        self.fault.end_delay()
        if self.phase in (Phase.WAITING, Phase.RESPONDING):
            self.cluster_stats.upstream_rq_active.dec()
            self.cluster_stats.upstream_rq_cancelled.inc()
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
            self.cluster_stats.charge_code(reply.status, host=self.upstream_host)
        response, body = local_reply_response(  # adds x-envoy-overloaded to UO replies
            reply, server_name=self.ctx.server_name, now_s=self.ctx.wall())
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
        self.fault.end_delay()
        self.retry.release_slot(self.limits)
        return close_stream(self, self.duration_ms)

    def __repr__(self) -> str:
        return (f"HttpStream({self.method} {self.path} phase={self.phase.value} "
                f"attempt={self.retry.attempt} code={self.response_code} flags={self.flags})")


def protocol_error_stream(ctx: StreamContext, reply: LocalReply | int
                          ) -> tuple[HttpStream, SendLocalReply]:
    """A stream for a request the codec rejected (``DPE``), with its local reply.

    Args:
        ctx: the connection's context.
        reply: the codec's reply (:mod:`~meshlab.proxy.http.limits`), or an h11 hint (431/400).
    """
    if isinstance(reply, int):
        reply = downstream_protocol_error(reply)
    stream = HttpStream(ctx, None)
    stream.protocol = "HTTP/1.1"
    return stream, stream.local_reply(reply)
