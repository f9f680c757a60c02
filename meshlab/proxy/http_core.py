"""Per-request HTTP/1.1 state machine of the sidecar, without I/O (ENVOY.md §1, §8, §9).

The asyncio layer parses bytes with h11, creates one :class:`HttpStream` per request, feeds it
events and executes the :class:`Action` each call returns. The stream owns routing, retries,
header rewriting, local replies, response flags, stats and the access-log record.

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

Istio specifics followed here (it plays istio-proxy, not plain Envoy): ``server`` is overwritten
with ``envoy`` on outbound and ``istio-envoy`` on inbound; ``x-envoy-attempt-count`` is added to
upstream requests (``include_request_attempt_count``); the default outbound retry policy is
``num_retries 2`` on ``connect-failure,refused-stream,unavailable,cancelled`` (503 excluded);
HTTP/1.0 is refused with 426 as Envoy does without ``accept_http_10``.
"""

from __future__ import annotations

import base64
import enum
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

import h11

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
from meshlab.proxy.metrics import DestinationService, PeerInfo, ProxyStats
from meshlab.proxy.router import Address, Cluster, Router

#: Envoy ``max_request_headers_kb`` default (60 KiB); h11 reports larger heads with hint 431.
MAX_REQUEST_HEADERS_BYTES = 60 * 1024
PEER_METADATA = b"x-envoy-peer-metadata"
PEER_METADATA_ID = b"x-envoy-peer-metadata-id"
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                         b"te", b"upgrade", b"trailer", b"proxy-authenticate"})
_REQ_DROP = _HOP_BY_HOP | {b"x-envoy-attempt-count", b"expect", b"content-length",
                           PEER_METADATA, PEER_METADATA_ID}
_RESP_DROP = _HOP_BY_HOP | {b"server", b"x-envoy-upstream-service-time", PEER_METADATA,
                            PEER_METADATA_ID}


class Phase(enum.Enum):
    """Where a stream is in the rules table."""

    REQUEST = "request"
    CONNECTING = "connecting"
    BACKOFF = "backoff"
    WAITING = "waiting"
    RESPONDING = "responding"
    DONE = "done"


# -- actions ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connect:
    """Get a connection (pooled or new) to ``address`` within ``timeout_s``."""

    address: Address
    bind_ip: str | None
    timeout_s: float
    attempt: int


@dataclass(frozen=True)
class Backoff:
    """Wait ``delay_s`` before the next attempt (Envoy retry backoff, full jitter)."""

    delay_s: float


@dataclass(frozen=True)
class SendRequest:
    """Write ``request`` and ``body`` on the connection just obtained, then await the response."""

    request: h11.Request
    body: bytes


@dataclass(frozen=True)
class ForwardResponse:
    """Send these (rewritten) response headers downstream, then stream the upstream body."""

    response: h11.Response


@dataclass(frozen=True)
class SendLocalReply:
    """Send a generated response downstream (then close when ``close``)."""

    response: h11.Response
    body: bytes
    close: bool


@dataclass(frozen=True)
class ResetDownstream:
    """Abort the downstream connection (response already started)."""


@dataclass(frozen=True)
class Done:
    """Nothing more to send for this stream."""


Action = Connect | Backoff | SendRequest | ForwardResponse | SendLocalReply | ResetDownstream | Done


# -- helpers ------------------------------------------------------------------------------------

_date_cache: tuple[int, bytes] = (0, b"")


def http_date(now_s: float | None = None) -> bytes:
    """RFC 7231 ``date`` header value (cached per second)."""
    global _date_cache
    now = time.time() if now_s is None else now_s
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache = (sec, formatdate(sec, usegmt=True).encode())
    return _date_cache[1]


def reason_phrase(status: int) -> bytes:
    """Standard reason phrase (Envoy generates its own instead of forwarding the upstream's)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def encode_peer_metadata(peer: PeerInfo) -> bytes:
    """``x-envoy-peer-metadata`` value for our pod (base64 JSON; Istio uses a protobuf Struct)."""
    doc = {"WORKLOAD_NAME": peer.workload, "NAMESPACE": peer.namespace, "APP": peer.app,
           "VERSION": peer.version, "CLUSTER_ID": peer.cluster_id}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode())


def decode_peer_metadata(value: bytes | None) -> PeerInfo | None:
    """Inverse of :func:`encode_peer_metadata`; None when absent or unreadable."""
    if not value:
        return None
    try:
        doc = json.loads(base64.b64decode(value, validate=True))
        return PeerInfo(workload=str(doc.get("WORKLOAD_NAME", "unknown")),
                        namespace=str(doc.get("NAMESPACE", "unknown")),
                        app=str(doc.get("APP", "unknown")),
                        version=str(doc.get("VERSION", "unknown")),
                        cluster_id=str(doc.get("CLUSTER_ID", "unknown")))
    except (ValueError, TypeError, AttributeError):
        return None


def backoff_delay_s(retry_number: int, settings: RetrySettings, rng: Callable[[], float]) -> float:
    """Envoy ``JitteredExponentialBackOffStrategy``: uniform in [0, base*(2^n - 1)), capped.

    Args:
        retry_number: 1 for the first retry.
        settings: the retry policy (base 25 ms, max 250 ms by default).
        rng: uniform [0, 1) source.
    """
    upper_ms = min(settings.base_interval_ms * ((1 << retry_number) - 1), settings.max_interval_ms)
    return rng() * upper_ms / 1000.0


def _fmt_addr(addr: Address | None) -> str | None:
    return f"{addr[0]}:{addr[1]}" if addr else None


@dataclass
class AccessRecord:
    """Values of one access-log line (Istio's JSON keys; None prints as null / ``-``)."""

    start_time_s: float
    route_name: str | None
    method: str | None
    path: str | None
    protocol: str | None
    response_code: int
    response_flags: str
    response_code_details: str | None
    connection_termination_details: str | None
    upstream_transport_failure_reason: str | None
    bytes_received: int
    bytes_sent: int
    duration_ms: int
    upstream_service_time: str | None
    x_forwarded_for: str | None
    user_agent: str | None
    request_id: str | None
    authority: str | None
    upstream_host: str | None
    upstream_cluster: str | None
    upstream_local_address: str | None
    downstream_local_address: str | None
    downstream_remote_address: str | None
    requested_server_name: str | None = None


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
        self.attempt = 0
        self.retries_done = 0
        self.tried: set[Address] = set()
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
        self.method = self.path = self.authority = self.user_agent = None
        self.xff = self.request_id = None
        self.protocol: str | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._had_body_framing = False
        self.http = ctx.stats.http(ctx.cluster.http_stat_prefix)
        self.cluster_stats = ctx.stats.cluster(ctx.cluster.name)
        self.http.downstream_rq_total.inc()
        self.http.downstream_rq_http1_total.inc()
        self.http.downstream_rq_active.inc()
        if request is not None:
            self._parse_request(request)

    def _parse_request(self, request: h11.Request) -> None:
        self.method = request.method.decode("latin-1")
        self.path = request.target.decode("latin-1")
        self.protocol = "HTTP/" + request.http_version.decode()
        inbound = self.ctx.direction == "inbound"
        for name, value in request.headers:
            if name == b"host":
                self.authority = value.decode("latin-1")
            elif name == b"user-agent":
                self.user_agent = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                self.xff = value.decode("latin-1")
            elif name == b"x-request-id":
                self.request_id = value.decode("latin-1")
            elif name in (b"content-length", b"transfer-encoding"):
                self._had_body_framing = True
            elif name == PEER_METADATA and inbound:
                self.peer = decode_peer_metadata(value)
            if name not in _REQ_DROP:
                self._headers.append((name, value))
        if self.request_id is None:  # HCM generate_request_id (UUID4)
            self.request_id = str(uuid.uuid4())
            self._headers.append((b"x-request-id", self.request_id.encode()))
        if not any(n == b"x-forwarded-proto" for n, _ in self._headers):
            self._headers.append((b"x-forwarded-proto", b"http"))
        if not inbound and self.ctx.cluster.service is not None:
            self._headers.append((PEER_METADATA, encode_peer_metadata(self.ctx.own_peer)))

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
        endpoint = self.ctx.router.pick(self.ctx.cluster, self.tried)
        if endpoint is None:
            self.cluster_stats.upstream_cx_none_healthy.inc()  # type: ignore[attr-defined]
            return self.local_reply(NO_HEALTHY_UPSTREAM, charge_cluster=True)
        self.attempt += 1
        self.tried.add(endpoint)
        self.upstream_host = endpoint
        self.phase = Phase.CONNECTING
        self._attempt_start = self.ctx.clock()
        return Connect(endpoint, self.ctx.cluster.bind_ip, self.ctx.connect_timeout_s,
                       self.attempt)

    def on_connected(self, local_address: Address | None) -> Action:
        """A connection to the chosen endpoint is ready: build the upstream request."""
        self.upstream_local = local_address
        self.phase = Phase.WAITING
        self.cluster_stats.upstream_rq_total.inc()  # type: ignore[attr-defined]
        self.cluster_stats.upstream_rq_active.inc()
        headers = list(self._headers)
        headers.append((b"x-envoy-attempt-count", str(self.attempt).encode()))
        if self.body or self._had_body_framing:
            headers.append((b"content-length", str(len(self.body)).encode()))
        assert self.request is not None
        req = h11.Request(method=self.request.method, target=self.request.target,
                          headers=headers, http_version=b"1.1")
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
        policy = self.ctx.retry
        if policy is not None and self._retriable(reason, policy, before_request):
            if self.retries_done < policy.num_retries:
                self.retries_done += 1
                self.cluster_stats.upstream_rq_retry.inc()  # type: ignore[attr-defined]
                self.phase = Phase.BACKOFF
                return Backoff(backoff_delay_s(self.retries_done, policy, self.ctx.rng))
            self.flags.add(Flag.URX)
            self.cluster_stats.upstream_rq_retry_limit_exceeded.inc()  # type: ignore[attr-defined]
        reply = upstream_reset_reply(reason, transport_failure, retried=self.retries_done > 0)
        return self.local_reply(reply, charge_cluster=True)

    @staticmethod
    def _retriable(reason: ResetReason, policy: RetrySettings, before_request: bool) -> bool:
        on = policy.retry_on
        if "reset" in on:
            return True
        if reason.is_connect_failure and ("connect-failure" in on or "reset-before-request" in on):
            return True
        return before_request and "reset-before-request" in on

    def on_backoff_elapsed(self) -> Action:
        """The retry backoff is over: next attempt."""
        return self._next_attempt()

    # -- response side --------------------------------------------------------------------------

    def on_response_headers(self, response: h11.Response) -> Action:
        """Upstream response headers arrived: rewrite and forward them."""
        now = self.ctx.clock()
        assert self._request_complete is not None
        self.upstream_service_time_ms = int((now - self._request_complete) * 1000)
        self.response_code = response.status_code
        self.details = VIA_UPSTREAM
        self.phase = Phase.RESPONDING
        self.cluster_stats.charge_code(response.status_code)
        if self.retries_done:
            self.cluster_stats.upstream_rq_retry_success.inc()  # type: ignore[attr-defined]
        outbound = self.ctx.direction == "outbound"
        headers = []
        has_date = False
        for name, value in response.headers:
            if name == PEER_METADATA and outbound:
                self.peer = decode_peer_metadata(value)
            if name in _RESP_DROP:
                continue
            if name == b"date":
                has_date = True
            headers.append((name, value))
        if not has_date:
            headers.append((b"date", http_date(self.ctx.wall())))
        headers.append((b"server", self.ctx.server_name))
        headers.append((b"x-envoy-upstream-service-time",
                        str(self.upstream_service_time_ms).encode()))
        if not outbound:
            headers.append((PEER_METADATA, encode_peer_metadata(self.ctx.own_peer)))
        return ForwardResponse(h11.Response(status_code=response.status_code, headers=headers,
                                            reason=reason_phrase(response.status_code)))

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
        body = reply.body.encode()
        headers = [(b"content-length", str(len(body)).encode())]
        if body:
            headers.append((b"content-type", b"text/plain"))
        headers += [(b"date", http_date(self.ctx.wall())), (b"server", self.ctx.server_name)]
        if reply.close_connection:
            headers.append((b"connection", b"close"))
        self.bytes_sent += len(body)
        self.phase = Phase.DONE
        return SendLocalReply(h11.Response(status_code=reply.status, headers=headers,
                                           reason=reason_phrase(reply.status)),
                              body, reply.close_connection)

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
            authority=self.authority, upstream_host=_fmt_addr(self.upstream_host),
            upstream_cluster=self.ctx.cluster.name,
            upstream_local_address=_fmt_addr(self.upstream_local),
            downstream_local_address=_fmt_addr(self.ctx.downstream_local),
            downstream_remote_address=_fmt_addr(self.ctx.downstream_remote))

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
                f"attempt={self.attempt} code={self.response_code} flags={self.flags})")


def protocol_error_stream(ctx: StreamContext, status_hint: int) -> tuple[HttpStream, SendLocalReply]:
    """A stream for a request h11 could not parse (``DPE``), with its local reply.

    Args:
        ctx: the connection's context.
        status_hint: h11's ``error_status_hint`` (431 for oversized headers, else 400).
    """
    stream = HttpStream(ctx, None)
    stream.protocol = "HTTP/1.1"
    return stream, stream.local_reply(downstream_protocol_error(status_hint))
