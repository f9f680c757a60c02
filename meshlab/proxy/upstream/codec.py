"""Client side of one upstream HTTP/1.1 connection, without I/O: request bytes and response events.

- :func:`encode_request`: the request head and body as h11 would write them (``host`` first,
  then the other fields in order; the router already set ``content-length`` for a body), built
  with byte joins.
- :class:`ResponseParser`: httptools (llhttp) parses the upstream's bytes through callbacks into
  the events the stream core consumes: a :class:`ResponseHead` (duck-compatible with
  ``h11.Response``), ``h11.Data`` and ``h11.EndOfMessage``. As h11 does for a client:

  - a ``1xx`` response is skipped (Envoy answers ``100-continue`` itself);
  - the response to a ``HEAD`` has no body whatever its ``content-length`` says;
  - a body without ``content-length`` or chunked framing ends at EOF (HTTP/1.0 style), which
    also makes the connection unusable afterwards;
  - EOF before the response ended raises :class:`UpstreamClosed`, unparseable bytes raise
    :class:`UpstreamProtocolError` (the stream core turns these into ``UC`` and ``UPE``).

  :attr:`ResponseParser.keep_alive` says whether the connection may carry another request once
  the response ended (``connection: close`` or an HTTP/1.0 answer without keep-alive say no).
"""

from __future__ import annotations

from collections import deque

import h11
import httptools

_END = h11.EndOfMessage()


class UpstreamClosed(Exception):
    """The upstream closed or reset the connection while a request used it."""


class UpstreamProtocolError(Exception):
    """The upstream sent bytes that are not an HTTP/1.1 response."""


class HeaderList(list):  # type: ignore[type-arg]
    """``[(lowercase name, value)]`` that also answers h11's ``raw_items()``."""

    def raw_items(self) -> list[tuple[bytes, bytes]]:
        """The fields themselves (names already lowercase)."""
        return self


class ResponseHead:
    """A parsed upstream response head (read like ``h11.Response``).

    Attributes:
        status_code: e.g. 200.
        reason: the reason phrase as received.
        headers: :class:`HeaderList` of ``(lowercase name, value)`` in arrival order.
        http_version: ``b"1.1"`` or ``b"1.0"``.
    """

    __slots__ = ("headers", "http_version", "reason", "status_code")

    def __init__(self, status_code: int, headers: HeaderList, reason: bytes = b"",
                 http_version: bytes = b"1.1") -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = reason
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"ResponseHead({self.status_code}, {len(self.headers)} headers)"


def encode_request(request: object, body: bytes) -> bytes:
    """The bytes of a whole request (``request``: ``method``, ``target``, ``headers``).

    ``headers`` may be h11's ``Headers`` (``raw_items()``) or a list of ``(name, value)``.
    """
    headers = request.headers  # type: ignore[attr-defined]
    items = headers.raw_items() if hasattr(headers, "raw_items") else headers
    out = [b"%s %s HTTP/1.1\r\n" % (request.method, request.target)]  # type: ignore[attr-defined]
    rest = []
    for name, value in items:
        if name == b"host" or name.lower() == b"host":
            out.append(b"%s: %s\r\n" % (name, value))
        else:
            rest.append(b"%s: %s\r\n" % (name, value))
    out += rest
    out.append(b"\r\n")
    if body:
        out.append(body)
    return b"".join(out)


class ResponseParser:
    """Response events of one upstream connection (see the module rules).

    Use: :meth:`expect` before each request is written, :meth:`feed` with every chunk read
    (``b""`` at EOF), then take :attr:`events` (a deque, oldest first).
    """

    def __init__(self) -> None:
        self.events: deque[object] = deque()
        self.keep_alive = True
        self.in_response = False  # a request is out and its response has not ended
        self.eof = False
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._skip = False  # inside a 1xx response
        self._headers = HeaderList()
        self._reason = b""
        self._head_done = False
        self._length_known = False

    def expect(self, method: bytes) -> None:
        """A request with ``method`` is about to be written: its response comes next."""
        self.in_response = True
        self._head_done = False
        if self._head_only or method == b"HEAD":
            self._parser = httptools.HttpResponseParser(self)  # llhttp has no "no body" switch
        self._head_only = method == b"HEAD"

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (``b""`` = EOF) into :attr:`events`.

        Raises:
            UpstreamProtocolError: unparseable bytes, or bytes while no response is expected.
            UpstreamClosed: EOF before the response ended.
        """
        if not data:
            self._feed_eof()
            return
        if not self.in_response:
            self.keep_alive = False  # Envoy: data on an idle connection is a protocol error
            raise UpstreamProtocolError("data received on an idle connection")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.keep_alive = False
            raise UpstreamProtocolError("upgrade responses are not proxied") from None
        except httptools.HttpParserError as exc:
            self.keep_alive = False
            raise UpstreamProtocolError(str(exc)) from None

    def _feed_eof(self) -> None:
        self.eof = True
        self.keep_alive = False
        if not self.in_response:
            return
        if self._head_done and not self._length_known:  # body delimited by EOF
            self.in_response = False
            self.events.append(_END)
            return
        raise UpstreamClosed("connection closed before the response ended")

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = HeaderList()
        self._reason = b""
        self._skip = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        if code < 200:
            self._skip = True
            return
        if not self.in_response:  # a second response to one request: never reuse
            self.keep_alive = False
            self._skip = True
            return
        headers = self._headers
        self._head_done = True
        self._length_known = any(n in (b"content-length", b"transfer-encoding") for n, _ in headers)
        self.events.append(ResponseHead(code, headers, self._reason,
                                        parser.get_http_version().encode()))
        if not parser.should_keep_alive():
            self.keep_alive = False
        if self._head_only:
            self._end()

    def on_body(self, body: bytes) -> None:
        if self._head_only or self._skip or not self.in_response:
            return
        self.events.append(h11.Data(data=body))

    def on_message_complete(self) -> None:
        if self._skip:
            self._skip = False
            return
        if self.in_response:
            self._end()

    def _end(self) -> None:
        self.in_response = False
        self.events.append(_END)

    def __repr__(self) -> str:
        return (f"ResponseParser(in_response={self.in_response}, keep_alive={self.keep_alive}, "
                f"events={len(self.events)})")
