"""Downstream request-head limits and codec errors as Envoy's HTTP/1 codec reports them (sans-IO).

Rules (``E:source/common/http/http1/codec_impl.cc``, ``balsa_parser.cc``; ENVOY.md §1, §8):

- ``max_request_headers_kb`` (60): the BalsaParser gets it as ``max_header_length``, counted over
  the raw head bytes (request line, header lines and their CRLFs). Over it → 431
  ``Request Header Fields Too Large`` (31 B), flag ``DPE``, details ``http1.headers_too_large``.
- ``max_headers_count`` (100): a 101st header → 431, details ``http1.too_many_headers``.
- Any other parse failure → 400 ``Bad Request``, ``DPE`` and a codec detail
  (``http1.codec_error`` unless a more specific one applies).
- The connection closes after such a reply; the access log shows ``"- - HTTP/1.1"`` because the
  head never completed.

:class:`HeadMeter` checks the limits incrementally on the bytes as they arrive (h11 enforces its
``max_incomplete_event_size`` only on incomplete heads, so it cannot be the authority): every
chunk is scanned once, so a client dripping a huge head byte by byte costs linear time.
"""

from __future__ import annotations

import h11

from meshlab.proxy.flags import Flag, LocalReply

HEADERS_TOO_LARGE = LocalReply(431, "Request Header Fields Too Large", "http1.headers_too_large",
                               Flag.DPE, close_connection=True)
TOO_MANY_HEADERS = LocalReply(431, "Request Header Fields Too Large", "http1.too_many_headers",
                              Flag.DPE, close_connection=True)

#: h11 error message fragment → Envoy codec details (400).
_DETAILS = (
    ("transfer-encoding", "http1.invalid_transfer_encoding"),
    ("content-length", "http1.codec_error"),
    ("illegal request line", "http1.codec_error"),
    ("illegal header", "http1.invalid_characters"),
    ("invalid header", "http1.invalid_characters"),
)


class HeadLimitExceeded(Exception):
    """A request head went over a limit; :attr:`reply` is the 431 to send."""

    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.details)
        self.reply = reply


def codec_error_reply(exc: h11.RemoteProtocolError) -> LocalReply:
    """The HCM's local reply for an h11 parse error (431 when h11 says the head is too big)."""
    if exc.error_status_hint == 431:
        return HEADERS_TOO_LARGE
    text = str(exc).lower()
    details = next((d for frag, d in _DETAILS if frag in text), "http1.codec_error")
    return LocalReply(400, "Bad Request", details, Flag.DPE, close_connection=True)


class HeadMeter:
    """Counts the bytes and header lines of the request head being received.

    Args:
        max_bytes: ``max_request_headers_kb * 1024``.
        max_count: ``max_headers_count``.

    Call :meth:`feed` with every chunk read while a request head is pending and :meth:`reset`
    when h11 has produced the request.
    """

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.reset()

    def reset(self) -> None:
        """Start metering a new request head."""
        self._tail = b""
        self._bytes = 0
        self._count = 0
        self._lines = 0
        self._done = False

    def feed(self, data: bytes) -> LocalReply | None:
        """Account for ``data``; returns the 431 reply once a limit is exceeded, else None."""
        if self._done or not data:
            return None
        if not self._lines and not self._tail:  # common case: a whole head in one read
            end = data.find(b"\r\n\r\n")
            if end > 0 and data[:1] not in (b"\r", b"\n"):
                head = data[:end]
                fields = head.count(b"\n")  # one line per field after the request line
                if b"\n " not in head and b"\n\t" not in head and \
                        fields == head.count(b"\r\n") and fields <= self.max_count and \
                        end + 2 <= self.max_bytes:  # within both limits (else: line by line)
                    self._done = True
                    return None
        buf = self._tail + data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl].rstrip(b"\r")
            self._bytes += nl + 1 - start
            start = nl + 1
            if not line:
                if self._lines:  # blank line ends the head (leading blank lines are skipped)
                    self._done = True
                    return None
                continue
            self._lines += 1
            if self._lines > 1 and line[:1] not in (b" ", b"\t"):
                self._count += 1
                if self._count > self.max_count:
                    self._done = True
                    return TOO_MANY_HEADERS
            if self._bytes > self.max_bytes:
                self._done = True
                return HEADERS_TOO_LARGE
        self._tail = buf[start:]
        if self._bytes + len(self._tail) > self.max_bytes:
            self._done = True
            return HEADERS_TOO_LARGE
        return None

    def __repr__(self) -> str:
        return f"HeadMeter(bytes={self._bytes}, headers={self._count}, done={self._done})"
