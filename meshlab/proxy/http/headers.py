"""Header rewriting of the sidecar's HTTP/1.1 streams, without I/O (ENVOY.md §1, §9).

Istio specifics: ``server`` is overwritten with the HCM ``server_name`` (``envoy`` outbound,
``istio-envoy`` inbound); ``x-envoy-attempt-count`` is added to upstream requests
(``include_request_attempt_count``); a missing ``x-request-id`` is generated (UUID4) and
``x-forwarded-proto`` defaulted; hop-by-hop headers are dropped both ways; the peer metadata
exchange header ``x-envoy-peer-metadata`` goes out on outbound requests to a known service and on
inbound responses, and is read from inbound requests and outbound responses.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from dataclasses import dataclass
from http import HTTPStatus

import h11

from meshlab.proxy.flags import Flag, LocalReply
from meshlab.proxy.http.codec import Http1Request
from meshlab.proxy.http.route import CONSUMED_HEADERS
from meshlab.proxy.stats.metrics import PeerInfo
from meshlab.proxy.upstream.codec import HeaderList, ResponseHead

#: Envoy ``max_request_headers_kb`` default (60 KiB); h11 reports larger heads with hint 431.
MAX_REQUEST_HEADERS_BYTES = 60 * 1024
PEER_METADATA = b"x-envoy-peer-metadata"
PEER_METADATA_ID = b"x-envoy-peer-metadata-id"
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                         b"te", b"upgrade", b"trailer", b"proxy-authenticate"})
_REQ_DROP = _HOP_BY_HOP | CONSUMED_HEADERS | {b"x-envoy-attempt-count", b"expect",
                                              b"content-length", PEER_METADATA, PEER_METADATA_ID}
_RESP_DROP = _HOP_BY_HOP | {b"server", b"x-envoy-upstream-service-time", PEER_METADATA,
                            PEER_METADATA_ID}

#: A downstream request head: the codec's, or h11's (same attributes).
DownstreamRequest = Http1Request | h11.Request

_date_cache: tuple[int, bytes] = (0, b"")


def http_date(now_s: float | None = None) -> bytes:
    """RFC 7231 ``date`` header value (cached per second)."""
    global _date_cache
    now = time.time() if now_s is None else now_s
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache = (sec, imf_fixdate(sec).encode())
    return _date_cache[1]


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_fixdate(sec: int) -> str:
    """RFC 9110 IMF-fixdate of epoch second ``sec``, e.g. ``Sun, 06 Dec 2026 04:25:15 GMT``
    (what ``email.utils.formatdate(sec, usegmt=True)`` gives, without importing ``email``)."""
    t = time.gmtime(sec)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


#: Reason phrase of each status. Envoy writes RFC 7231's names (``CodeUtility::toString``),
#: where Python 3.11 keeps RFC 2616's for 413, 414 and 416.
_PHRASES = {**{int(s): s.phrase.encode() for s in HTTPStatus},
            413: b"Payload Too Large", 414: b"URI Too Long", 416: b"Range Not Satisfiable"}


def reason_phrase(status: int) -> bytes:
    """Standard reason phrase (Envoy generates its own instead of forwarding the upstream's);
    empty for an unknown status."""
    return _PHRASES.get(status, b"")


@functools.lru_cache(maxsize=16)
def encode_peer_metadata(peer: PeerInfo) -> bytes:
    """``x-envoy-peer-metadata`` value for our pod (base64 JSON; Istio uses a protobuf Struct)."""
    doc = {"WORKLOAD_NAME": peer.workload, "NAMESPACE": peer.namespace, "APP": peer.app,
           "VERSION": peer.version, "CLUSTER_ID": peer.cluster_id}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode())


@functools.lru_cache(maxsize=256)
def decode_peer_metadata(value: bytes | None) -> PeerInfo | None:
    """Inverse of :func:`encode_peer_metadata`; None when absent or unreadable (cached: a
    connection's peer sends the same value on every request)."""
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


def new_request_id() -> str:
    """A random (version 4) UUID in its 36-character text form, as ``str(uuid.uuid4())``
    gives it, without building a ``uuid.UUID`` per request."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class RequestHead:
    """What a stream keeps of a downstream request head.

    Attributes:
        method: request method, e.g. ``GET``.
        path: request target.
        protocol: ``HTTP/1.1`` or ``HTTP/1.0``.
        authority: ``host`` header.
        user_agent: ``user-agent`` header.
        xff: ``x-forwarded-for`` header.
        request_id: ``x-request-id`` (generated when absent).
        peer: downstream workload from inbound peer metadata, else None.
        headers: the rewritten headers to send upstream (without attempt count and length).
        had_body_framing: the request carried ``content-length`` or ``transfer-encoding``.
        envoy: the router-consumed ``x-envoy-*`` request headers (:mod:`~meshlab.proxy.http.route`), which
            are not forwarded.
    """

    method: str
    path: str
    protocol: str
    authority: str | None
    user_agent: str | None
    xff: str | None
    request_id: str
    peer: PeerInfo | None
    headers: list[tuple[bytes, bytes]]
    had_body_framing: bool
    envoy: dict[bytes, bytes]


def parse_request_head(request: DownstreamRequest, *, inbound: bool,
                       send_peer: PeerInfo | None) -> RequestHead:
    """Read the facts of ``request`` and rewrite its headers for upstream.

    Args:
        request: the downstream request head.
        inbound: the stream serves the inbound (15006) side; only then peer metadata is read.
        send_peer: our pod's labels to add as peer metadata, None to add none.
    """
    authority = user_agent = xff = request_id = None
    peer: PeerInfo | None = None
    had_body_framing = False
    headers: list[tuple[bytes, bytes]] = []
    envoy: dict[bytes, bytes] = {}
    for name, value in request.headers:
        if name == b"host":
            authority = value.decode("latin-1")
        elif name == b"user-agent":
            user_agent = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            xff = value.decode("latin-1")
        elif name == b"x-request-id":
            request_id = value.decode("latin-1")
        elif name in (b"content-length", b"transfer-encoding"):
            had_body_framing = True
        elif name == PEER_METADATA and inbound:
            peer = decode_peer_metadata(value)
        elif name in CONSUMED_HEADERS:
            envoy[name] = value
        if name not in _REQ_DROP:
            headers.append((name, value))
    if request_id is None:  # HCM generate_request_id (UUID4)
        request_id = new_request_id()
        headers.append((b"x-request-id", request_id.encode()))
    if not any(n == b"x-forwarded-proto" for n, _ in headers):
        headers.append((b"x-forwarded-proto", b"http"))
    if send_peer is not None:
        headers.append((PEER_METADATA, encode_peer_metadata(send_peer)))
    return RequestHead(method=request.method.decode("latin-1"),
                       path=request.target.decode("latin-1"),
                       protocol="HTTP/" + request.http_version.decode(), authority=authority,
                       user_agent=user_agent, xff=xff, request_id=request_id, peer=peer,
                       headers=headers, had_body_framing=had_body_framing, envoy=envoy)


def upstream_request(request: DownstreamRequest, head: RequestHead, attempt: int,
                     body_bytes: int) -> Http1Request:
    """The HTTP/1.1 request head for upstream attempt number ``attempt``.

    Args:
        request: the downstream request head (method and target are kept).
        head: its parsed form (rewritten headers).
        attempt: ``x-envoy-attempt-count`` value.
        body_bytes: length of the buffered body; sent as ``content-length`` when non-zero or
            when the downstream request framed a body.
    """
    headers = list(head.headers)
    headers.append((b"x-envoy-attempt-count", str(attempt).encode()))
    if body_bytes or head.had_body_framing:
        headers.append((b"content-length", str(body_bytes).encode()))
    # every name/value was validated by the codec or is generated here: no re-validation
    return Http1Request(request.method, request.target, headers, b"1.1")


def rewrite_response(response: ResponseHead | h11.Response, *, outbound: bool,
                     server_name: bytes, service_time_ms: int, send_peer: PeerInfo | None,
                     now_s: float) -> tuple[ResponseHead, PeerInfo | None]:
    """Rewrite an upstream response head for downstream.

    Args:
        response: the upstream response head.
        outbound: the stream serves the outbound (15001) side; only then peer metadata is read.
        server_name: ``server`` value to set.
        service_time_ms: ``x-envoy-upstream-service-time`` value.
        send_peer: our pod's labels to add as peer metadata, None to add none.
        now_s: wall clock for a missing ``date``.

    Returns:
        (the rewritten head, the upstream workload from outbound peer metadata or None).
    """
    headers = HeaderList()
    has_date = False
    peer: PeerInfo | None = None
    for name, value in response.headers:
        if name == PEER_METADATA and outbound:
            peer = decode_peer_metadata(value)
        if name in _RESP_DROP:
            continue
        if name == b"date":
            has_date = True
        headers.append((name, value))
    if not has_date:
        headers.append((b"date", http_date(now_s)))
    headers.append((b"server", server_name))
    headers.append((b"x-envoy-upstream-service-time", str(service_time_ms).encode()))
    if send_peer is not None:
        headers.append((PEER_METADATA, encode_peer_metadata(send_peer)))
    # every name/value was validated by the parser or is generated here: no re-validation
    return ResponseHead(response.status_code, headers, reason_phrase(response.status_code)), peer


def local_reply_response(reply: LocalReply, *, server_name: bytes,
                         now_s: float) -> tuple[h11.Response, bytes]:
    """Response head and body of a generated reply (``connection: close`` when it closes).

    ``x-envoy-overloaded: true`` is added to ``UO`` replies (router ``onUpstreamReset`` on an
    overflow, ENVOY.md §9). A 204 carries no ``content-length``.
    """
    body = reply.body.encode()
    headers = [] if reply.status == 204 else [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"text/plain"))
    headers += [(b"date", http_date(now_s)), (b"server", server_name)]
    if reply.flag is Flag.UO:
        headers.append((b"x-envoy-overloaded", b"true"))
    if reply.close_connection:
        headers.append((b"connection", b"close"))
    return (h11.Response(status_code=reply.status, headers=headers,
                         reason=reason_phrase(reply.status)), body)
