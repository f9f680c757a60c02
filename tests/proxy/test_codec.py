"""Differential tests: the downstream ServerCodec (httptools fast path) against plain h11.

Both codecs get the same bytes (whole, or one byte at a time) and must agree on every event,
every error verdict (and its Envoy codec details), every response byte they write and whether
the connection may carry another request. Hypothesis reuses the fuzz test's hostile requests.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from test_fuzz import hostile_requests

from meshlab.proxy.http.codec import ServerCodec
from meshlab.proxy.http.limits import codec_error_reply
from meshlab.proxy.upstream.codec import HeaderList, ResponseHead

MAX = 60 * 1024 + 65536
BODY = b"x" * 10
#: Response variants: (head, body chunks); the index cycles per request.
RESPONSES = [
    (h11.Response(status_code=200, headers=[(b"content-length", b"10"), (b"server", b"envoy")],
                  reason=b"OK"), [BODY]),
    (h11.Response(status_code=200, headers=[(b"server", b"envoy")], reason=b"OK"), [BODY, b""]),
    (h11.Response(status_code=204, headers=[(b"connection", b"keep-alive")],
                  reason=b"No Content"), []),
    (h11.Response(status_code=400, headers=[(b"content-length", b"10"), (b"connection", b"close")],
                  reason=b"Bad Request"), [BODY]),
]


def as_head(response: h11.Response) -> ResponseHead:
    """The same response as the router hands it to the codec (lowercase names, no h11)."""
    return ResponseHead(response.status_code, HeaderList(list(response.headers)),
                        response.reason)


def run(codec, raw: bytes, chunk: int, router_heads: bool = False) -> list:
    """Drive ``codec`` over ``raw`` the way http_conn does; a transcript of what happened.
    ``router_heads``: send responses as :class:`ResponseHead` (the sidecar's own heads)."""
    out: list = []
    feed = [raw[i:i + chunk] for i in range(0, len(raw), chunk)] + [b""]
    served = 0
    while True:
        try:
            event = codec.next_event()
        except h11.RemoteProtocolError as exc:
            out.append(("error", codec_error_reply(exc).details))
            return out
        if event is h11.NEED_DATA:
            if not feed:
                return out + ["starved"]
            codec.receive_data(feed.pop(0))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return out + ["closed"]
        if isinstance(event, h11.Data):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event.data)
            else:
                out.append(("data", event.data))
            continue
        if not isinstance(event, h11.EndOfMessage):  # a request head
            out.append(("request", event.method, event.target, list(event.headers),
                        event.http_version, codec.they_are_waiting_for_100_continue))
            continue
        head, chunks = RESPONSES[served % len(RESPONSES)]
        if router_heads:
            head = as_head(head)
        served += 1
        try:
            sent = codec.send(head) + b"".join(codec.send(h11.Data(data=c)) for c in chunks)
            sent += codec.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            return out + [("local error", str(exc))]
        out.append(("response", sent))
        if isinstance(codec, ServerCodec):
            again = codec.start_next_cycle()
        else:
            again = codec.our_state is h11.DONE and codec.their_state is h11.DONE
            if again:
                codec.start_next_cycle()
        if not again:
            return out + ["must close"]


def assert_same(raw: bytes) -> None:
    for chunk in (len(raw) or 1, 1 if len(raw) < 2000 else 1500):  # h11 rescans: no 1 B drip
        for router_heads in (False, True):
            ref = run(h11.Connection(h11.SERVER, max_incomplete_event_size=MAX), raw, chunk)
            fast = run(ServerCodec(MAX), raw, chunk, router_heads)
            if fast and fast[-1][0] == "error" and ref and ref[-1][0] == "error":
                fast[-1] = ref[-1] = "error"  # a body error: h11's message differs, both close
            assert fast == ref, (raw, chunk, router_heads)


CASES = [
    b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: a  \r\nX-E:\r\n\r\n",
    (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\n"
    b"Host: x\r\nConnection: close\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n"),
    (b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhelloGET /f"
    b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel",
    b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
    b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nHEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /echo HTTP/1.0\r\n\r\n",
    b"GET /echo HTTP/1.1\r\n\r\n",
    b"GET /echo HTTP/1.1\nHost: x\n\n",
    b"\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"FOO /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\x80\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Le",
    b"GARBAGE\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
    b"",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
]


@pytest.mark.parametrize("raw", CASES)
def test_codec_matches_h11(raw):
    assert_same(raw)


def test_common_requests_take_the_fast_path():
    codec = ServerCodec(MAX)
    run(codec, CASES[2] + CASES[3], 4096)
    assert not codec.fallen_back


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=hostile_requests())
def test_codec_matches_h11_on_hostile_input(raw):
    assert_same(raw)
