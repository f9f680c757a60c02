"""Reply composition without sockets: echo, debug, routing, multi aggregation, Go's additions."""

from __future__ import annotations

import gzip
import random

import pytest

from meshlab.apps.fortio_query import EchoLimits
from meshlab.apps.fortio_replies import (
    USER_AGENT,
    EchoConfig,
    TargetResult,
    debug_reply,
    debug_summary,
    echo_reply,
    mirror_headers,
    multi_reply,
    redirect_reply,
    route,
    simple_headers,
)
from meshlab.apps.gohttp import (
    HttpReply,
    HttpRequest,
    canonical_header_key,
    finalize,
    format_uptime,
    get_header,
    sniff_content_type,
)

CONFIG = EchoConfig.create(EchoLimits(max_delay_s=1.5, max_payload_bytes=4096))


def _echo(target: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
          method: str = "GET", config: EchoConfig = CONFIG) -> HttpReply:
    request = HttpRequest(method, target, headers or [], body, remote_addr="10.0.0.1:4242")
    return echo_reply(request, random.Random(3), config)


def test_echo_returns_body_and_content_headers() -> None:
    reply = _echo("/echo", b"hello", [("content-type", "text/x"), ("Content-Length", "5")],
                  method="POST")
    assert (reply.status, reply.body) == (200, b"hello")
    assert get_header(reply.headers, "Content-Type") == "text/x"
    assert get_header(reply.headers, "Content-Length") == "5"


def test_echo_status_delay_headers_close() -> None:
    reply = _echo("/echo?status=503&delay=250ms&header=x-foo:bar&header=X-Foo:baz&close=true")
    assert reply.status == 503
    assert reply.delay_s == pytest.approx(0.25)
    assert reply.close
    assert [v for k, v in reply.headers if k == "X-Foo"] == ["bar", "baz"]
    assert get_header(reply.headers, "Connection") == "close"


def test_header_argument_wins_over_echoed_content_type() -> None:
    reply = _echo("/echo?header=Content-Type:application/json", b"{}",
                  [("Content-Type", "text/plain")], method="POST")
    assert get_header(reply.headers, "Content-Type") == "application/json"


def test_size_sends_capped_payload() -> None:
    reply = _echo("/echo?size=100000", b"ignored", method="POST")
    assert len(reply.body) == 4096 and reply.body == CONFIG.payload[:4096]
    assert get_header(reply.headers, "Content-Type") == "application/octet-stream"
    assert get_header(reply.headers, "Content-Length") == "4096"


def test_gzip_when_accepted() -> None:
    reply = _echo("/echo?gzip=true", b"x" * 1000, [("Accept-Encoding", "gzip, br")], "POST")
    assert get_header(reply.headers, "Content-Encoding") == "gzip"
    assert gzip.decompress(reply.body) == b"x" * 1000


@pytest.mark.parametrize("status", [0, 99, 1000, 101, -1])
def test_status_go_refuses_aborts_connection(status: int) -> None:
    assert _echo(f"/echo?status={status}").abort


def test_informational_status_then_200() -> None:
    reply = _echo("/echo?status=103")
    assert (reply.informational, reply.status, reply.abort) == (103, 200, False)


def test_default_query_only_without_question_mark() -> None:
    config = EchoConfig.create(default_query="status=418")
    assert _echo("/echo", config=config).status == 418
    assert _echo("/echo?", config=config).status == 200


def test_debug_dump_format() -> None:
    request = HttpRequest("POST", "/debug?x=1", [("Host", "h:8080"), ("x-b", "2"), ("X-A", "1"),
                                                 ("x-a", "3")], b"\x00hi\n", "1.1", "1.2.3.4:5")
    reply = debug_reply(request, random.Random(1), CONFIG, uptime_s=61.26, hostname="pod-0",
                        environ={"K": "V"})
    text = reply.body.decode()
    assert text.startswith("Φορτίο version meshlab-")
    assert "echo debug server up for 1m1.3s on pod-0 - request from 1.2.3.4:5\n\n" in text
    assert "\n\nPOST /debug?x=1 HTTP/1.1\n\nheaders:\n\nHost: h:8080\nX-A: 1,3\nX-B: 2\n" in text
    assert text.endswith("\n\nbody:\n\n\\x00hi\\n\n")
    assert get_header(reply.headers, "Content-Type") == "text/plain; charset=UTF-8"
    assert "environment" not in text


def test_debug_env_dump_and_gzip() -> None:
    request = HttpRequest("GET", "/debug?env=dump", [("Accept-Encoding", "gzip")])
    reply = debug_reply(request, random.Random(1), CONFIG, uptime_s=0, hostname="h",
                        environ={"K": "V"})
    assert gzip.decompress(reply.body).decode().endswith("\nenvironment:\n\nK=V\n")


@pytest.mark.parametrize(("target", "expected"), [
    ("/debug", "debug"), ("/debug?x", "debug"), ("/debug/", "echo"), ("/debug/echo/x", "echo"),
    ("/", "echo"), ("/echo", "echo"), ("/unknown/path", "echo"), ("*", "echo"),
])
def test_route(target: str, expected: str) -> None:
    assert route(HttpRequest("GET", target), "/debug") == expected


def test_route_redirects_unclean_paths_like_servemux() -> None:
    reply = route(HttpRequest("GET", "//echo/./a/../b/?q=1"), "/debug")
    assert isinstance(reply, HttpReply)
    assert reply.status == 301
    assert get_header(reply.headers, "Location") == "/echo/b/?q=1"


def test_redirect_to_https() -> None:
    reply = redirect_reply(HttpRequest("GET", "/a?b", [("Host", "x:8081")]))
    assert reply.status == 303
    assert get_header(reply.headers, "Location") == "https://x:8081/a?b"


def test_mirror_headers() -> None:
    request = HttpRequest("GET", "/echo", [("host", "a"), ("x-request-id", "r1"),
                                           ("connection", "keep-alive"), ("User-Agent", "ua")],
                          remote_addr="10.0.0.9:1234")
    assert mirror_headers(request, 1) == [
        ("X-Request-Id", "r1"), ("User-Agent", "ua"), ("X-On-Behalf-Of", "10.0.0.9:1234"),
        ("X-Proxy-Agent", USER_AGENT), ("X-Fortio-Multi-Id", "2")]
    fortio_ua = HttpRequest("GET", "/", [("User-Agent", USER_AGENT)], remote_addr="a:1")
    assert all(k != "X-Proxy-Agent" for k, _ in mirror_headers(fortio_ua, 0))


def test_simple_headers_copy_only_trace_headers() -> None:
    request = HttpRequest("GET", "/", [("x-b3-traceid", "t"), ("cookie", "c")], remote_addr="a:1")
    names = [k for k, _ in simple_headers(request, 0)]
    assert names == ["X-B3-Traceid", "User-Agent", "X-On-Behalf-Of", "X-Fortio-Multi-Id"]


def test_multi_parallel_first_non_200_wins_and_errors_are_503() -> None:
    ok = TargetResult("http://a/x", 200, b"A")
    teapot = TargetResult("http://b/x", 418, b"B")
    down = TargetResult("http://c/x", None, error='Get "http://c/x": EOF')
    assert multi_reply([ok, teapot, down], serial=False).status == 418
    reply = multi_reply([ok, down, teapot], serial=False)
    assert reply.status == 503
    assert reply.body == b'AError for http://c/x: Get "http://c/x": EOF\nB'
    assert multi_reply([ok, ok], serial=False).status == 200


def test_multi_serial_uses_first_target_status() -> None:
    ok = TargetResult("http://a/x", 200, b"A")
    down = TargetResult("http://c/x", None, error="boom")
    assert multi_reply([ok, down], serial=True).status == 200
    assert multi_reply([down, ok], serial=True).status == 503


def test_finalize_adds_go_headers() -> None:
    headers, body = finalize(HttpReply(200, [], b"hello"), "GET", now_s=0)
    assert dict(headers) == {"Content-Length": "5", "Content-Type": "text/plain; charset=utf-8",
                             "Date": "Thu, 01 Jan 1970 00:00:00 GMT"}
    assert body == b"hello"


@pytest.mark.parametrize("status", [204, 304])
def test_finalize_strips_body_for_bodyless_status(status: int) -> None:
    headers, body = finalize(HttpReply(status, [("Content-Length", "3"),
                                                ("Content-Type", "x/y")], b"abc"), "GET")
    assert body == b"" and get_header(headers, "Content-Length") is None
    assert (get_header(headers, "Content-Type") is None) == (status == 304)


def test_finalize_head_and_unsafe_values() -> None:
    headers, body = finalize(HttpReply(200, [("X-A", " v\r\nw "), ("Bad Name", "x")], b"abc"),
                             "HEAD")
    assert body == b""
    assert get_header(headers, "X-A") == "v  w"
    assert get_header(headers, "Bad Name") is None


def test_go_helpers() -> None:
    assert canonical_header_key("x-fortio-multi-id") == "X-Fortio-Multi-Id"
    assert canonical_header_key("bad key") == "bad key"
    assert format_uptime(0.04) == "0s"
    assert format_uptime(3600 * 26 + 5) == "1d2h0m5s"
    assert debug_summary(b"a" * 600, 10) == "600: aaaaa...aaaaa"
    assert debug_summary(b'"\xff\t') == '\\"\\xff\\t'
    assert sniff_content_type(b"<html><body>") == "text/html; charset=utf-8"
    assert sniff_content_type(b"\x00\x01") == "application/octet-stream"
