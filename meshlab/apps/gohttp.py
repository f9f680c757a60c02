"""Go ``net/http`` conventions fortio inherits, as pure functions (sans-IO).

fortio is a Go program, so part of what a client sees comes from Go's HTTP server rather than
from fortio: canonical header names, ``Date``, ``Content-Type`` sniffing, reason phrases,
``ServeMux`` path cleaning, body rules per status. This module holds those rules and the two
message types the apps exchange (:class:`HttpRequest`, :class:`HttpReply`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus

_TOKEN_RE = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_VALUE_CHARS = str.maketrans({"\r": " ", "\n": " ", "\x00": " ", "\f": " ", "\v": " "})
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", '"': '\\"', "\\": "\\\\"}
_HTML_PREFIXES = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<title",
                  b"<table", b"<div", b"<p", b"<a", b"<br", b"<h1", b"<!--", b"<?xml")
_BINARY_BYTES = frozenset([*range(0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


@dataclass
class HttpRequest:
    """One complete HTTP/1.x request as the server received it.

    Attributes:
        method: e.g. ``"GET"``.
        target: the raw request target (``/echo?status=503``).
        headers: ``(name, value)`` pairs as received (original name case).
        body: the whole request body.
        http_version: ``"1.1"`` or ``"1.0"``.
        remote_addr: the peer as Go prints it (``10.0.0.1:4242``, ``[::1]:4242``).
    """

    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    http_version: str = "1.1"
    remote_addr: str = ""

    def header(self, name: str) -> str:
        """First value of header ``name`` (case-insensitive), ``""`` when absent."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return ""

    @property
    def path(self) -> str:
        """The path part of the target (absolute-form targets are reduced to their path)."""
        target = self.target
        if "://" in target and not target.startswith("/"):
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        return target.partition("?")[0]

    @property
    def query(self) -> str:
        """The raw query string (without ``?``)."""
        return self.target.partition("?")[2]


@dataclass
class HttpReply:
    """A reply for the I/O layer to send.

    Attributes:
        status: final status code.
        headers: ``(name, value)`` pairs, names in Go's canonical form.
        body: the body to send (ignored for HEAD, 1xx, 204 and 304).
        delay_s: seconds to wait before sending.
        close: close the connection after this reply.
        abort: close the connection without any reply (Go's panic on a bad status code).
        informational: a 1xx status to send before the final reply, or ``None``.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay_s: float = 0.0
    close: bool = False
    abort: bool = False
    informational: int | None = None



@lru_cache(maxsize=4096)
def canonical_header_key(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey`` (``x-foo-bar`` → ``X-Foo-Bar``)."""
    if not _TOKEN_RE.fullmatch(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def get_header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """First value of ``name`` in a canonical header list, or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


def set_header(headers: list[tuple[str, str]], name: str, value: str | None) -> None:
    """Replace every ``name`` header by one ``value`` (``None`` just deletes)."""
    headers[:] = [(k, v) for k, v in headers if k != name]
    if value is not None:
        headers.append((name, value))


def status_text(status: int) -> str:
    """Reason phrase as Go writes it (``status code 555`` for unknown codes)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status code {status}"


def go_quote(data: bytes) -> str:
    """Go's ``%q`` of a byte slice without the surrounding quotes."""
    out = []
    for char in data.decode("utf-8", errors="surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)



def format_uptime(seconds: float) -> str:
    """fortio's rounded uptime (0.1 s) in Go duration style with weeks/days (``1d2h0m3.4s``)."""
    tenths = round(seconds * 10)
    if tenths == 0:
        return "0s"
    weeks, tenths = divmod(tenths, 7 * 86400 * 10)
    days, tenths = divmod(tenths, 86400 * 10)
    hours, tenths = divmod(tenths, 3600 * 10)
    minutes, tenths = divmod(tenths, 60 * 10)
    secs = f"{tenths // 10}.{tenths % 10}" if tenths % 10 else f"{tenths // 10}"
    out = (f"{weeks}w" if weeks else "") + (f"{days}d" if days else "")
    if hours:
        out += f"{hours}h{minutes}m"
    elif minutes:
        out += f"{minutes}m"
    return out + f"{secs}s"


def sniff_content_type(body: bytes) -> str:
    """A small subset of Go's ``http.DetectContentType``: HTML, plain text or octet-stream."""
    head = body[:512].lstrip(b"\t\n\x0c\r ").lower()
    if head.startswith(_HTML_PREFIXES):
        return "text/html; charset=utf-8"
    if any(byte in _BINARY_BYTES for byte in body[:512]):
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def clean_path(path: str) -> str:
    """Go's ``ServeMux`` path cleaning (``path.Clean`` keeping a trailing slash)."""
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned



def finalize(reply: HttpReply, method: str, now_s: float | None = None,
             ) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body as Go's server puts them on the wire for ``reply``.

    Args:
        reply: the handler's reply (its headers are not modified).
        method: the request method (HEAD gets no body).
        now_s: epoch seconds for the ``Date`` header (defaults to now).

    Returns:
        ``(headers, body)`` with ``Date``, ``Content-Length`` and a sniffed ``Content-Type``
        added where Go adds them, and header values made safe to send.
    """
    headers = [(k, v.translate(_BAD_VALUE_CHARS).strip(" \t")) for k, v in reply.headers
               if _TOKEN_RE.fullmatch(k)]
    body = reply.body
    status = reply.status
    set_header(headers, "Transfer-Encoding", None)
    if status in (204, 304) or status < 200:
        set_header(headers, "Content-Length", None)
        if status == 304:
            set_header(headers, "Content-Type", None)
        body = b""
    elif method == "HEAD":
        body = b""
    else:
        set_header(headers, "Content-Length", str(len(body)))
        if (body and get_header(headers, "Content-Type") is None
                and not get_header(headers, "Content-Encoding")):
            headers.append(("Content-Type", sniff_content_type(body)))
    if get_header(headers, "Date") is None:
        headers.append(("Date", http_date(now_s)))
    if reply.close and get_header(headers, "Connection") is None:
        headers.append(("Connection", "close"))
    return headers, body


_date_cache: tuple[int, str] = (-1, "")


def http_date(now_s: float | None = None) -> str:
    """RFC 7231 ``Date`` value (cached per second)."""
    global _date_cache
    second = int(time.time() if now_s is None else now_s)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]
