"""What fortio replies, as pure functions of a request (sans-IO).

Each function takes a complete :class:`HttpRequest` and returns an :class:`HttpReply`; the asyncio
layer (:mod:`meshlab.apps.fortio_server`) only moves bytes and sleeps ``reply.delay_s``.

Rules (checked against fortio ``fhttp/http_server.go``, ``fhttp/http_forwarder.go``,
``jrpc/jrpcClient.go`` and Go's ``net/http`` server):

- Routing: ``/debug`` (exact) is the debug dump, everything else (``/``, ``/echo``,
  ``/debug/echo/…``, unknown paths) is the echo handler. A path that is not clean (``//``, ``.``,
  ``..``) gets a ``301`` to the cleaned path, as Go's ``ServeMux`` does.
- Echo: see :mod:`meshlab.apps.fortio_query` for the knobs. The request's ``Content-Type`` and
  ``Content-Length`` are echoed unless a ``header=`` argument set them; ``size=`` sends
  ``application/octet-stream`` payload bytes instead of the body.
- A status outside 100..999 (or 101) makes Go's server drop the connection without a reply;
  1xx (except 101) is sent as an informational response followed by ``200``.
- What Go's server adds on the wire (``Date``, sniffed ``Content-Type``…) is in
  :mod:`meshlab.apps.gohttp`.
- Multi (``-M``): every target gets ``base_url + request_uri`` with all request headers plus
  ``X-On-Behalf-Of``, ``X-Proxy-Agent`` and ``X-Fortio-Multi-Id``; the reply concatenates the
  target bodies (or ``Error for <url>: <err>\\n``). Parallel mode replies the first non-200
  status in target order (503 for a failed target); serial mode replies the first target's.
"""

from __future__ import annotations

import gzip
import html
import importlib.metadata
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshlab.apps.fortio_query import EchoLimits, decide_common, decide_echo, parse_query
from meshlab.apps.gohttp import (
    HttpReply,
    HttpRequest,
    canonical_header_key,
    clean_path,
    format_uptime,
    get_header,
    go_quote,
    set_header,
)

try:
    MESHLAB_VERSION = importlib.metadata.version("meshlab")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    MESHLAB_VERSION = "dev"

#: Version string shown where fortio shows its own (``/debug``, ``X-Proxy-Agent``).
VERSION = f"meshlab-{MESHLAB_VERSION}"
#: fortio's ``jrpc.UserAgent`` shape: ``fortio.org/fortio-<version>``.
USER_AGENT = f"fortio.org/fortio-{VERSION}"
#: Hop-by-hop or framing headers never copied to a target (the client sets its own framing).
HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                        "proxy-connection", "te", "trailer", "upgrade"})
DEFAULT_LIMITS = EchoLimits()

@dataclass(frozen=True)
class EchoConfig:
    """Server-wide settings of the echo and debug handlers.

    Attributes:
        limits: delay and payload caps.
        default_query: fortio ``-echo-server-default-params``, used when a target has no ``?``.
        payload: the shared pseudo-random payload ``size=`` slices (at least the max size).
        debug_path: fortio ``-echo-debug-path``; ``""`` turns the debug dump off.
    """

    limits: EchoLimits = DEFAULT_LIMITS
    default_query: str = ""
    payload: bytes = b""
    debug_path: str = "/debug"

    @classmethod
    def create(cls, limits: EchoLimits = DEFAULT_LIMITS, default_query: str = "",
               debug_path: str = "/debug", seed: int = 0) -> EchoConfig:
        """Build a config with a constant pseudo-random payload of ``limits.max_payload_bytes``."""
        payload = random.Random(seed).randbytes(limits.max_payload_bytes)
        return cls(limits=limits, default_query=default_query, payload=payload,
                   debug_path=debug_path)


def debug_summary(data: bytes, max_chars: int = 512) -> str:
    """fortio's ``DebugSummary``: the escaped data, or length + head + ``...`` + tail."""
    if len(data) <= max_chars + 3:
        return go_quote(data)
    half = max_chars // 2
    return f"{len(data)}: {go_quote(data[:half])}...{go_quote(data[-half:])}"


def route(request: HttpRequest, debug_path: str) -> HttpReply | str:
    """Pick fortio's handler: ``"debug"``, ``"echo"``, or a ready 301 for an unclean path."""
    path = request.path
    if request.target == "*":
        return "echo"
    cleaned = clean_path(path)
    if cleaned != path and request.method != "CONNECT":
        location = cleaned + ("?" + request.query if request.query else "")
        body = f'<a href="{html.escape(location)}">Moved Permanently</a>.\n\n'.encode()
        headers = [("Location", location)]
        if request.method in ("GET", "HEAD"):
            headers.append(("Content-Type", "text/html; charset=utf-8"))
        return HttpReply(301, headers, body if request.method == "GET" else b"")
    if debug_path and path == debug_path:
        return "debug"
    return "echo"


def _canonical_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(canonical_header_key(name), value) for name, value in pairs]


def _gzip_reply(reply: HttpReply) -> None:
    set_header(reply.headers, "Content-Encoding", "gzip")
    set_header(reply.headers, "Content-Length", None)
    reply.body = gzip.compress(reply.body, compresslevel=6, mtime=0)


def _apply_status(reply: HttpReply) -> HttpReply:
    status = reply.status
    if status < 100 or status > 999 or status == 101:
        reply.abort = True
    elif status < 200:
        reply.informational, reply.status = status, 200
    return reply


def echo_reply(request: HttpRequest, rng: random.Random, config: EchoConfig) -> HttpReply:
    """fortio's ``EchoHandler``: echo the body (or a payload) under the query's knobs.

    Args:
        request: the complete request.
        rng: source of the weighted rolls.
        config: server-wide echo settings.

    Returns:
        The reply (with ``delay_s`` still to be slept by the caller).
    """
    query_text = request.query
    if "?" not in request.target and config.default_query:
        query_text = config.default_query
    accepts_gzip = "gzip" in request.header("Accept-Encoding")
    decision = decide_echo(parse_query(query_text), rng, config.limits, accepts_gzip)
    headers: list[tuple[str, str]] = [("Connection", "close")] if decision.close else []
    headers += _canonical_pairs(decision.headers)
    reply = HttpReply(decision.status, headers, delay_s=decision.delay_s, close=decision.close)
    if decision.size is not None:
        if get_header(headers, "Content-Type") is None:
            headers.append(("Content-Type", "application/octet-stream"))
        set_header(headers, "Content-Length", str(decision.size))
        reply.body = config.payload[:decision.size]
    else:
        for name in ("Content-Type", "Content-Length"):
            value = request.header(name)
            if value and not get_header(headers, name):
                set_header(headers, name, value)
        reply.body = request.body
    if decision.gzip:
        _gzip_reply(reply)
    return _apply_status(reply)


def debug_reply(request: HttpRequest, rng: random.Random, config: EchoConfig, *,
                uptime_s: float, hostname: str, environ: Mapping[str, str]) -> HttpReply:
    """fortio's ``DebugHandler``: a text dump of the request (and ``env=dump``: environment).

    Args:
        request: the complete request.
        rng: source of the weighted rolls (``delay``/``close`` also apply here).
        config: server-wide echo settings.
        uptime_s: seconds since the server started.
        hostname: the host name to print.
        environ: environment variables printed for ``env=dump``.

    Returns:
        A 200 reply, gzipped when the client accepts gzip (fortio wraps it in its gzip handler).
    """
    query = parse_query(request.query)
    grouped: dict[str, list[str]] = {}
    for name, value in request.headers:
        key = canonical_header_key(name)
        if key != "Host":
            grouped.setdefault(key, []).append(value)
    banner = (f"Φορτίο version {VERSION} echo debug server up for {format_uptime(uptime_s)} on "
              f"{hostname} - request from {request.remote_addr}")
    lines = [banner, "",
             f"{request.method} {request.target} HTTP/{request.http_version}", "", "headers:", "",
             f"Host: {request.header('Host')}"]
    lines += [f"{key}: {','.join(grouped[key])}" for key in sorted(grouped)]
    lines += ["", "body:", "", debug_summary(request.body)]
    text = "\n".join(lines) + "\n"
    if query.get("env", [""])[0] == "dump":
        text += "\nenvironment:\n\n" + "".join(f"{k}={v}\n" for k, v in environ.items())
    decision = decide_common(query, rng, config.limits)
    headers: list[tuple[str, str]] = [("Connection", "close")] if decision.close else []
    headers += _canonical_pairs(decision.headers)
    if get_header(headers, "Content-Type") is None:
        headers.append(("Content-Type", "text/plain; charset=UTF-8"))
    reply = HttpReply(200, headers, text.encode(), delay_s=decision.delay_s, close=decision.close)
    if "gzip" in request.header("Accept-Encoding"):
        _gzip_reply(reply)
    return reply


def redirect_reply(request: HttpRequest) -> HttpReply:
    """fortio's ``RedirectToHTTPSHandler``: ``303`` to the same URL with ``https://``."""
    location = f"https://{request.header('Host')}{request.target}"
    headers = [("Location", location)]
    body = b""
    if request.method in ("GET", "HEAD"):
        headers.append(("Content-Type", "text/html; charset=utf-8"))
        body = f'<a href="{html.escape(location)}">See Other</a>.\n\n'.encode()
    return HttpReply(303, headers, body)


def mirror_headers(request: HttpRequest, target_index: int) -> list[tuple[str, str]]:
    """Headers fortio's multi-server sends to target ``target_index`` (0-based).

    All request headers are copied (minus hop-by-hop and framing ones, which the client sets
    itself), then ``X-On-Behalf-Of: <remote addr>``, ``X-Proxy-Agent`` (unless the request's
    User-Agent already is fortio's) and ``X-Fortio-Multi-Id: <index + 1>``.
    """
    headers = [(canonical_header_key(k), v) for k, v in request.headers
               if k.lower() not in HOP_BY_HOP]
    headers.append(("X-On-Behalf-Of", request.remote_addr))
    if request.header("User-Agent") != USER_AGENT:
        headers.append(("X-Proxy-Agent", USER_AGENT))
    headers.append(("X-Fortio-Multi-Id", str(target_index + 1)))
    return headers


def simple_headers(request: HttpRequest, target_index: int) -> list[tuple[str, str]]:
    """Headers for ``-multi-mirror-origin=false``: trace headers only, fortio's User-Agent."""
    headers = [(canonical_header_key(k), v) for k, v in request.headers
               if k.lower() in ("x-request-id", "b3") or k.lower().startswith("x-b3-")]
    headers += [("User-Agent", USER_AGENT), ("X-On-Behalf-Of", request.remote_addr),
                ("X-Fortio-Multi-Id", str(target_index + 1))]
    return headers


@dataclass(frozen=True)
class TargetResult:
    """What one multi-server target returned.

    Attributes:
        url: the URL that was requested.
        status: the target's status code, or ``None`` when the request failed.
        body: the target's body (possibly partial when reading it failed).
        error: Go-style error text when ``status`` is ``None``.
    """

    url: str
    status: int | None
    body: bytes = b""
    error: str = ""


def multi_reply(results: Sequence[TargetResult], serial: bool) -> HttpReply:
    """Combine target results as fortio's ``TeeParallelHandler`` / ``TeeSerialHandler`` do."""
    chunks = [r.body if r.status is not None else f"Error for {r.url}: {r.error}\n".encode()
              for r in results]
    status = 200
    if serial:
        if results:
            status = results[0].status if results[0].status is not None else 503
    else:
        for result in results:
            if result.status != 200:
                status = result.status if result.status is not None else 503
                break
    return _apply_status(HttpReply(status, [], b"".join(chunks)))

