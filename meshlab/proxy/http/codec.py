"""Downstream HTTP/1.1 server codec of one connection: httptools fast path, h11 fallback (sans-IO).

:class:`ServerCodec` offers the part of ``h11.Connection(h11.SERVER)`` that
:mod:`~meshlab.proxy.http.conn` uses (``receive_data``/``next_event``/``send``, 100-continue,
keep-alive) at a fraction of the Python work per request:

- **Fast path**: a request head that is plainly well formed (``METHOD target HTTP/1.x`` line,
  CRLF line ends, a ``host`` for HTTP/1.1, field values h11 would accept, no
  ``transfer-encoding``) is split by httptools (llhttp, strict mode) and its ``content-length``
  body sliced from the buffer; response heads are written with byte joins, following h11's
  framing rules exactly (``transfer-encoding: chunked`` for a length-less body, ``Connection:
  close`` once keep-alive is off, no body for HEAD/204/304).
- **Fallback**: anything else — llhttp rejects it, a chunked upload, bare-LF line ends, EOF or a
  huge buffer before the head completes — hands the unparsed bytes to a fresh
  ``h11.Connection`` for the rest of the connection, so malformed input gets h11's verdict
  (:func:`~meshlab.proxy.http.limits.codec_error_reply` maps it to Envoy's 400/431,
  ENVOY.md §1, §8) and chunked bodies h11's de-chunking.

Events are h11's (``h11.Data``, ``h11.EndOfMessage``, ``h11.ConnectionClosed``,
``h11.NEED_DATA``) except that a request head is always an :class:`Http1Request`.
"""

from __future__ import annotations

import re

import h11
import httptools

from meshlab.proxy.upstream.codec import ResponseHead

#: Request line the fast path takes (anything else goes to h11, which accepts more).
_REQUEST_LINE = re.compile(rb"([A-Z]+) ([\x21-\x7e]+) HTTP/(1\.[01])\r\n")
#: Bytes h11's field-value grammar (``h11._abnf.field_value``: tokens of ``[^\x00\s]`` joined by
#: spaces/tabs) rejects inside a value, searched once over the whole head: NUL, VT, FF, bare CR
#: (bare LF is caught by counting line ends; values are stripped of outer whitespace).
_BAD_VALUE_BYTE = re.compile(rb"[\x00\x0b\x0c]|\r(?!\n)")
_DIGITS = re.compile(rb"[0-9]+")
_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"})
_END = h11.EndOfMessage()
_IDLE, _BODY, _DONE = 0, 1, 2
#: Response fields that change h11's framing or ordering (the fast path avoids them).
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})


class Http1Request:
    """A parsed request head (duck-compatible with ``h11.Request``).

    Attributes:
        method, target, http_version: bytes, e.g. ``b"GET"``, ``b"/x"``, ``b"1.1"``.
        headers: ``[(lowercase name, value)]`` in arrival order.
    """

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 http_version: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"Http1Request({self.method!r} {self.target!r} HTTP/{self.http_version.decode()})"


class _Fallback(Exception):
    """The head needs h11."""


class _Headers:
    """httptools callback target collecting the header fields of one head."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


def _comma_values(value: bytes) -> list[bytes]:
    """h11 ``get_comma_header`` for one field value (lowercased, stripped, non-empty)."""
    return [v for v in (p.strip() for p in value.lower().split(b",")) if v]


class ServerCodec:
    """Server side of one downstream HTTP/1.1 connection (see module rules).

    Args:
        max_incomplete_event_size: bytes buffered without a complete head before h11 answers
            431 (Envoy's own limits are enforced above it, by
            :class:`~meshlab.proxy.http.limits.HeadMeter`).

    :meth:`next_event` and :meth:`send` raise ``h11.RemoteProtocolError`` /
    ``h11.LocalProtocolError`` as h11 does.
    """

    def __init__(self, max_incomplete_event_size: int) -> None:
        self._max = max_incomplete_event_size
        self._buf = bytearray()
        self._eof = False
        self._h11: h11.Connection | None = None
        self._phase = _IDLE
        self._remaining = 0  # request body bytes still to come
        self._method = b""  # last request's method (h11 keeps it across cycles too)
        self._version: bytes | None = None  # their HTTP version, None before a request
        self._keep_alive = True
        self._waiting_100 = False
        self._out_mode = ""  # response body framing: "" none, "length", "chunked", "raw"
        self._out_left = 0
        self._response_done = False

    @property
    def fallen_back(self) -> bool:
        """The connection is served by h11 from now on."""
        return self._h11 is not None

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        """The request asked ``expect: 100-continue`` and no body or response went yet."""
        if self._h11 is not None:
            return self._h11.they_are_waiting_for_100_continue
        return self._waiting_100

    # -- receive --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the client (b"" = EOF)."""
        if self._h11 is not None:
            self._h11.receive_data(data)
        elif data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> object:
        """The next event: :class:`Http1Request`, ``h11.Data``, ``h11.EndOfMessage``,
        ``h11.ConnectionClosed`` or ``h11.NEED_DATA``.

        Raises:
            h11.RemoteProtocolError: malformed input (h11's verdict).
        """
        if self._h11 is None:
            if self._phase == _BODY:
                return self._next_body()
            if self._phase == _IDLE:
                try:
                    return self._next_head()
                except _Fallback:
                    self._fall_back()
            else:
                return h11.ConnectionClosed()  # h11 pauses here; nothing reads past a request
        assert self._h11 is not None
        event = self._h11.next_event()
        if type(event) is h11.Request:
            return Http1Request(event.method, event.target, list(event.headers),
                                event.http_version)
        return h11.ConnectionClosed() if event is h11.PAUSED else event

    def _fall_back(self) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        conn.receive_data(bytes(self._buf))
        if self._eof:
            conn.receive_data(b"")
        self._buf.clear()
        self._h11 = conn

    def _next_head(self) -> object:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:  # h11 may end (bare LF), reject or 431 what is here: let it
            if self._eof and not buf:
                return h11.ConnectionClosed()
            if self._eof or (buf and buf[0] < 0x21) or len(buf) > self._max or \
                    b"\n\n" in buf or b"\n\r\n" in buf:
                raise _Fallback
            return h11.NEED_DATA
        head = bytes(buf[:end + 4])
        line = _REQUEST_LINE.match(head)
        if line is None or head.count(b"\n") != head.count(b"\r\n") or \
                _BAD_VALUE_BYTE.search(head) is not None:
            raise _Fallback
        collected = _Headers()
        try:
            httptools.HttpRequestParser(collected).feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            raise _Fallback from None
        method, target, version = line.groups()
        headers: list[tuple[bytes, bytes]] = []
        hosts = length = 0
        keep_alive = version == b"1.1"
        waiting_100 = False
        for name, value in collected.fields:
            name = name.lower()
            value = value.rstrip(b" \t")
            if name in _SPECIAL:
                if name == b"host":
                    hosts += 1
                elif name == b"content-length":
                    if _DIGITS.fullmatch(value) is None:
                        raise _Fallback
                    length = int(value)
                elif name == b"transfer-encoding":
                    raise _Fallback  # chunked uploads: h11's reader
                elif name == b"connection":
                    keep_alive = keep_alive and b"close" not in _comma_values(value)
                else:
                    waiting_100 = waiting_100 or b"100-continue" in _comma_values(value)
            headers.append((name, value))
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            raise _Fallback
        del buf[:end + 4]
        self._phase, self._remaining = _BODY, length
        self._method, self._version = method, version
        self._keep_alive = self._keep_alive and keep_alive
        self._waiting_100 = waiting_100 and version == b"1.1"
        return Http1Request(method, target, headers, version)

    def _next_body(self) -> object:
        if not self._remaining:
            self._phase = _DONE
            self._waiting_100 = False
            return _END
        if self._buf:
            data = bytes(self._buf[:self._remaining])
            del self._buf[:len(data)]
            self._remaining -= len(data)
            self._waiting_100 = False
            return h11.Data(data=data)
        if self._eof:
            raise h11.RemoteProtocolError(
                "peer closed connection without sending complete message body")
        return h11.NEED_DATA

    # -- send -----------------------------------------------------------------------------------

    def send(self, event: h11.Response | h11.InformationalResponse | h11.Data | h11.EndOfMessage
             | ResponseHead) -> bytes:
        """The bytes for ``event`` (h11's output, byte for byte; a
        :class:`~meshlab.proxy.upstream.codec.ResponseHead` is written as ``h11.Response``).

        Raises:
            h11.LocalProtocolError: body bytes beyond the declared length, or too few at the end.
        """
        if self._h11 is not None:
            if not isinstance(event, (h11.Response, h11.InformationalResponse, h11.Data,
                                      h11.EndOfMessage)):  # a ResponseHead
                event = h11.Response(status_code=event.status_code,
                                     headers=list(event.headers), reason=event.reason)
            return self._h11.send(event) or b""
        kind = type(event)
        if kind is h11.Data:
            return self._frame(event.data)  # type: ignore[union-attr]
        if kind is h11.EndOfMessage:
            if self._out_mode == "length" and self._out_left:
                raise h11.LocalProtocolError("Too little data for declared Content-Length")
            self._response_done = True
            return b"0\r\n\r\n" if self._out_mode == "chunked" else b""
        if kind is h11.InformationalResponse:
            self._waiting_100 = False
            return self._head(event.status_code, event.reason,  # type: ignore[union-attr]
                              event.headers.raw_items())
        return self._response_head(event)  # type: ignore[arg-type]

    def _frame(self, data: bytes) -> bytes:
        mode = self._out_mode
        if mode == "chunked":
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if mode == "raw":
            return data
        self._out_left -= len(data)
        if self._out_left < 0:
            raise h11.LocalProtocolError("Too much data for declared Content-Length")
        return data

    def _fast_response_head(self, response: ResponseHead) -> bytes | None:
        """The common case in one pass: a router-built head (lowercase names) with one plain
        ``content-length``, no ``transfer-encoding``/``connection``/``host``, keep-alive on,
        a request that was not HEAD/CONNECT and a status with a body. None otherwise."""
        status = response.status_code
        if not self._keep_alive or status in (204, 304) or status < 200 or \
                self._method in (b"HEAD", b"CONNECT"):
            return None
        length = None
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, response.reason)]
        for name, value in response.headers:
            if name in _FRAMING:
                if name != b"content-length" or length is not None or not value.isdigit():
                    return None
                length = int(value)
            parts.append(b"%s: %s\r\n" % (name, value))
        if length is None:
            return None
        parts.append(b"\r\n")
        self._waiting_100 = False
        self._out_mode, self._out_left = "length", length
        self._response_done = False
        return b"".join(parts)

    def _response_head(self, response: h11.Response | ResponseHead) -> bytes:
        """h11 ``_clean_up_response_headers_for_sending`` + ``write_any_response``."""
        if type(response) is ResponseHead:
            fast = self._fast_response_head(response)
            if fast is not None:
                return fast
        self._waiting_100 = False
        status = response.status_code
        items = response.headers.raw_items()
        names = [n.lower() for n, _ in items]
        method = self._method
        close = False
        if status in (204, 304) or method == b"HEAD" or \
                (method == b"CONNECT" and 200 <= status < 300):
            self._out_mode, self._out_left = "length", 0
            if method == b"HEAD" and status not in (204, 304):  # headers chosen as for GET
                framing = self._framing(items, names)
                if framing != "length":
                    items, close = self._unknown_length(items, names)
        else:
            framing = self._framing(items, names)
            if framing == "length":
                lengths = _comma_values(items[names.index(b"content-length")][1])
                self._out_mode, self._out_left = "length", int(lengths[0])
            else:
                items, close = self._unknown_length(items, names)
                self._out_mode = "chunked" if any(
                    n.lower() == b"transfer-encoding" for n, _ in items) else "raw"
        if not self._keep_alive or close:
            tokens = {t for n, v in items if n.lower() == b"connection" for t in _comma_values(v)}
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            items = [(n, v) for n, v in items if n.lower() != b"connection"]
            items += [(b"Connection", t) for t in sorted(tokens)]
        if any(n.lower() == b"connection" and b"close" in _comma_values(v) for n, v in items):
            self._keep_alive = False
        self._response_done = False
        return self._head(status, response.reason, items)

    @staticmethod
    def _framing(items: list[tuple[bytes, bytes]], names: list[bytes]) -> str:
        """h11 ``_body_framing`` of a response with a body: chunked, length or http/1.0."""
        if b"transfer-encoding" in names and _comma_values(items[names.index(b"transfer-encoding")][1]):
            return "chunked"
        if b"content-length" in names and _comma_values(items[names.index(b"content-length")][1]):
            return "length"
        return "http/1.0"

    def _unknown_length(self, items: list[tuple[bytes, bytes]], names: list[bytes]
                        ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """A body of unknown length: chunked for HTTP/1.1 clients, else close-delimited."""
        kept = [(n, v) for (n, v), low in zip(items, names, strict=True)
                if low not in (b"content-length", b"transfer-encoding")]
        if self._version is None or self._version < b"1.1":
            return kept, self._method != b"HEAD"
        return kept + [(b"Transfer-Encoding", b"chunked")], False

    @staticmethod
    def _head(status: int, reason: bytes, items: list[tuple[bytes, bytes]]) -> bytes:
        """Status line and header block (a ``host`` field first, as h11 writes it)."""
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        out += [b"%s: %s\r\n" % kv for kv in items if kv[0].lower() == b"host"]
        out += [b"%s: %s\r\n" % kv for kv in items if kv[0].lower() != b"host"]
        out.append(b"\r\n")
        return b"".join(out)

    # -- cycle ----------------------------------------------------------------------------------

    def start_next_cycle(self) -> bool:
        """After a complete exchange: ready for the next request (True), or must close (False)."""
        if self._h11 is not None:
            conn = self._h11
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return False
            conn.start_next_cycle()
            return True
        if self._phase != _DONE or not self._response_done or not self._keep_alive:
            return False
        self._phase, self._response_done, self._out_mode = _IDLE, False, ""
        return True

    def __repr__(self) -> str:
        mode = "h11" if self._h11 is not None else "fast"
        return f"ServerCodec({mode}, phase={self._phase}, buffered={len(self._buf)})"
