"""Envoy response flags and local replies (sans-IO tables; ENVOY.md §1).

Rules:

- A stream's flags are a set rendered joined by ``,`` (``-`` when none). They render in enum
  order, as Envoy <= 1.30 (bitmask) did and as most Istio field logs show (``UF,URX``); current
  Envoy renders them in the order they were set (``URX,UF`` for an exhausted HTTP retry), which
  :data:`RENDER_IN_SET_ORDER` switches to.
- A router local reply after an upstream reset has the body
  ``upstream connect error or disconnect/reset before headers. [retried and the latest ]reset
  reason: <r>[, transport failure reason: <t>]`` and details
  ``upstream_reset_before_response_started{<r>[|<t>]}`` with spaces replaced by ``_``.
- ``UH`` → 503 ``no healthy upstream``; ``UT`` → 504 ``upstream request timeout`` (204 empty
  with ``x-envoy-upstream-rq-timeout-alt-response``); ``NR`` → 404 with an empty body; ``UPE`` →
  502; ``UO`` → 503 plus ``x-envoy-overloaded: true``; ``DPE`` → 400 ``Bad Request`` (431 for
  oversized headers, :mod:`meshlab.proxy.http.limits`); ``FI`` → the configured status with
  ``fault filter abort`` (:mod:`meshlab.proxy.http.fault_filter`).
- A status the app itself returned (even 503) carries no flag and details ``via_upstream``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Flag(enum.Enum):
    """Envoy ``CoreResponseFlag`` short codes, in enum order (value = (index, long name))."""

    LH = (0, "FailedLocalHealthCheck")
    UH = (1, "NoHealthyUpstream")
    UT = (2, "UpstreamRequestTimeout")
    LR = (3, "LocalReset")
    UR = (4, "UpstreamRemoteReset")
    UF = (5, "UpstreamConnectionFailure")
    UC = (6, "UpstreamConnectionTermination")
    UO = (7, "UpstreamOverflow")
    NR = (8, "NoRouteFound")
    DI = (9, "DelayInjected")
    FI = (10, "FaultInjected")
    RL = (11, "RateLimited")
    UAEX = (12, "UnauthorizedExternalService")
    RLSE = (13, "RateLimitServiceError")
    DC = (14, "DownstreamConnectionTermination")
    URX = (15, "UpstreamRetryLimitExceeded")
    SI = (16, "StreamIdleTimeout")
    IH = (17, "InvalidEnvoyRequestHeaders")
    DPE = (18, "DownstreamProtocolError")
    UMSDR = (19, "UpstreamMaxStreamDurationReached")
    RFCF = (20, "ResponseFromCacheFilter")
    NFCF = (21, "NoFilterConfigFound")
    DT = (22, "DurationTimeout")
    UPE = (23, "UpstreamProtocolError")
    NC = (24, "NoClusterFound")
    OM = (25, "OverloadManagerTerminated")
    DF = (26, "DnsResolutionFailed")
    DO = (27, "DropOverload")
    DR = (28, "DownstreamRemoteReset")
    UDO = (29, "UnconditionalDropOverload")

    @property
    def short(self) -> str:
        """The ``%RESPONSE_FLAGS%`` code, e.g. ``UF``."""
        return self.name

    @property
    def long(self) -> str:
        """The ``%RESPONSE_FLAGS_LONG%`` name, e.g. ``UpstreamConnectionFailure``."""
        return self.value[1]


#: Render flags in the order they were set (current Envoy) instead of enum order (Envoy <= 1.30).
RENDER_IN_SET_ORDER = False


class ResponseFlags:
    """Ordered, duplicate-free set of flags of one stream or TCP session."""

    __slots__ = ("_flags",)

    def __init__(self, *flags: Flag) -> None:
        self._flags: list[Flag] = []
        for f in flags:
            self.add(f)

    def add(self, flag: Flag) -> None:
        """Set ``flag`` (no-op when already set)."""
        if flag not in self._flags:
            self._flags.append(flag)

    def __contains__(self, flag: object) -> bool:
        return flag in self._flags

    def __bool__(self) -> bool:
        return bool(self._flags)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ordered())

    def _ordered(self) -> list[Flag]:
        if RENDER_IN_SET_ORDER:
            return self._flags
        return sorted(self._flags, key=lambda f: f.value[0])

    def __str__(self) -> str:
        return ",".join(f.name for f in self._ordered()) if self._flags else "-"

    def long(self) -> str:
        """``%RESPONSE_FLAGS_LONG%`` rendering (``-`` when empty)."""
        return ",".join(f.long for f in self._ordered()) if self._flags else "-"

    def __repr__(self) -> str:
        return f"ResponseFlags({self})"


class ResetReason(enum.Enum):
    """Upstream stream reset reasons (``resetReasonToString`` strings)."""

    LOCAL_CONNECTION_FAILURE = "local connection failure"
    REMOTE_CONNECTION_FAILURE = "remote connection failure"
    CONNECTION_TIMEOUT = "connection timeout"
    CONNECTION_TERMINATION = "connection termination"
    LOCAL_RESET = "local reset"
    OVERFLOW = "overflow"
    REMOTE_RESET = "remote reset"
    PROTOCOL_ERROR = "protocol error"

    @property
    def flag(self) -> Flag:
        """The response flag Envoy's router sets for this reset (``streamResetReasonToResponseFlag``)."""
        return _RESET_FLAG[self]

    @property
    def is_connect_failure(self) -> bool:
        """True for the reasons Envoy's ``connect-failure`` retry condition matches."""
        return self in (ResetReason.LOCAL_CONNECTION_FAILURE,
                        ResetReason.REMOTE_CONNECTION_FAILURE, ResetReason.CONNECTION_TIMEOUT)


_RESET_FLAG = {
    ResetReason.LOCAL_CONNECTION_FAILURE: Flag.UF,
    ResetReason.REMOTE_CONNECTION_FAILURE: Flag.UF,
    ResetReason.CONNECTION_TIMEOUT: Flag.UF,
    ResetReason.CONNECTION_TERMINATION: Flag.UC,
    ResetReason.LOCAL_RESET: Flag.LR,
    ResetReason.OVERFLOW: Flag.UO,
    ResetReason.REMOTE_RESET: Flag.UR,
    ResetReason.PROTOCOL_ERROR: Flag.UPE,
}

#: Prefix of every upstream-reset local reply body.
RESET_BODY_PREFIX = "upstream connect error or disconnect/reset before headers. "
VIA_UPSTREAM = "via_upstream"


@dataclass(frozen=True)
class LocalReply:
    """A response the sidecar generates itself.

    Attributes:
        status: HTTP status.
        body: response body (``text/plain``), possibly empty.
        details: ``%RESPONSE_CODE_DETAILS%``.
        flag: the response flag to set, or None.
        close_connection: close the downstream connection after sending it.
    """

    status: int
    body: str
    details: str
    flag: Flag | None
    close_connection: bool = False


def _underscore(text: str) -> str:
    return text.replace(" ", "_")


def upstream_reset_reply(reason: ResetReason, transport_failure: str = "", *,
                         retried: bool = False) -> LocalReply:
    """The router's local reply after an upstream reset before response headers.

    Args:
        reason: the (last attempt's) reset reason.
        transport_failure: ``%UPSTREAM_TRANSPORT_FAILURE_REASON%`` text, e.g.
            ``delayed connect error: Connection refused``; empty when none.
        retried: the request was retried (adds ``retried and the latest``).

    Returns:
        A 503 (502 for protocol errors) :class:`LocalReply`.
    """
    body = RESET_BODY_PREFIX + ("retried and the latest " if retried else "")
    body += f"reset reason: {reason.value}"
    if transport_failure:
        body += f", transport failure reason: {transport_failure}"
    inner = _underscore(reason.value)
    if transport_failure:
        inner += "|" + _underscore(transport_failure)
    status = 502 if reason is ResetReason.PROTOCOL_ERROR else 503
    return LocalReply(status, body, f"upstream_reset_before_response_started{{{inner}}}",
                      reason.flag)


def upstream_reset_after_start_details(reason: ResetReason, transport_failure: str = "") -> str:
    """Details when the upstream resets after response headers were forwarded."""
    inner = _underscore(reason.value)
    if transport_failure:
        inner += "|" + _underscore(transport_failure)
    return f"upstream_reset_after_response_started{{{inner}}}"


NO_HEALTHY_UPSTREAM = LocalReply(503, "no healthy upstream", "no_healthy_upstream", Flag.UH)
UPSTREAM_TIMEOUT = LocalReply(504, "upstream request timeout", "response_timeout", Flag.UT)
PER_TRY_TIMEOUT_DETAILS = "upstream_per_try_timeout"


def upstream_timeout_reply(*, per_try: bool = False, alt_response: bool = False) -> LocalReply:
    """The router's ``UT`` reply (``onUpstreamTimeoutAbort``).

    Args:
        per_try: the last attempt's per-try timeout fired (details ``upstream_per_try_timeout``)
            rather than the route timeout (``response_timeout``).
        alt_response: the request carried ``x-envoy-upstream-rq-timeout-alt-response``: 204 with
            an empty body instead of 504 ``upstream request timeout``.
    """
    details = PER_TRY_TIMEOUT_DETAILS if per_try else UPSTREAM_TIMEOUT.details
    if alt_response:
        return LocalReply(204, "", details, Flag.UT)
    return LocalReply(504, UPSTREAM_TIMEOUT.body, details, Flag.UT)


NO_ROUTE = LocalReply(404, "", "route_not_found", Flag.NR)
#: The buffer filter's body overflow (``requestDataTooLarge``): no flag; sent before the request
#: completed, so an HTTP/1 connection closes after it.
PAYLOAD_TOO_LARGE = LocalReply(413, "Payload Too Large", "request_payload_too_large", None,
                               close_connection=True)
CLUSTER_NOT_FOUND = LocalReply(503, "", "cluster_not_found", Flag.NC)
DOWNSTREAM_DISCONNECT_DETAILS = "downstream_remote_disconnect"


def downstream_protocol_error(status_hint: int = 400, details: str = "http1.codec_error") -> LocalReply:
    """The HCM's reply to a malformed downstream request (``DPE``); closes the connection.

    Args:
        status_hint: 431 for oversized headers, otherwise 400.
        details: codec details, e.g. ``http1.codec_error`` or ``http1.headers_too_large``.
    """
    if status_hint == 431:
        return LocalReply(431, "Request Header Fields Too Large", "http1.headers_too_large",
                          Flag.DPE, close_connection=True)
    return LocalReply(400, "Bad Request", details, Flag.DPE, close_connection=True)
