"""The fortio-compatible server over real sockets on 127.0.0.1 (in-process, ephemeral ports)."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable

import pytest
from fortio_support import LOCAL, WAIT_S, RunningServer, echo_config, free_port, local, request

from meshlab.apps.fortio_server import MultiSpec
from meshlab.apps.fortio_upstream import Destination
from meshlab.apps.netutil import ListenSpec
from meshlab.errors import LabError

Factory = Callable[..., RunningServer]


def _multi(factory: Factory, *target_urls: str, **overrides: object) -> RunningServer:
    targets = tuple(Destination.parse(url) for url in target_urls)
    config = echo_config(http=None, multis=[MultiSpec(local(), targets)], **overrides)
    return factory(config)


def test_status_size_and_headers(echo_server: RunningServer) -> None:
    port = echo_server.port("http-echo")
    response, body = request(port, "GET", "/echo?status=503&size=1000&header=X-Test:yes")
    assert response.status == 503
    assert len(body) == 1000
    assert response.getheader("X-Test") == "yes"
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("Date")


def test_post_body_is_echoed(echo_server: RunningServer) -> None:
    port = echo_server.port("http-echo")
    response, body = request(port, "POST", "/echo/sub?x=1", b"payload-123",
                             {"Content-Type": "text/x-test"})
    assert (response.status, body) == (200, b"payload-123")
    assert response.getheader("Content-Type") == "text/x-test"


def test_delay_is_honoured_and_capped(echo_server: RunningServer) -> None:
    port = echo_server.port("http-echo")
    start = time.monotonic()
    response, _ = request(port, "GET", "/echo?delay=250ms")
    assert response.status == 200
    assert 0.25 <= time.monotonic() - start < 2.0
    start = time.monotonic()
    request(port, "GET", "/echo?delay=30s")  # capped at max_delay_s=0.5 by echo_config()
    assert 0.5 <= time.monotonic() - start < 3.0


def test_keep_alive_reuses_the_connection(echo_server: RunningServer) -> None:
    conn = http.client.HTTPConnection(LOCAL, echo_server.port("http-echo"), timeout=WAIT_S)
    request(0, "GET", "/echo", conn=conn)
    first_sock = conn.sock
    for _ in range(5):
        response, _ = request(0, "POST", "/echo", b"x", conn=conn)
        assert response.status == 200
    assert conn.sock is first_sock
    conn.close()


def test_close_closes_the_connection_after_the_reply(echo_server: RunningServer) -> None:
    with socket.create_connection((LOCAL, echo_server.port("http-echo")), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /echo?close=true HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # ends with the server's FIN
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in data


def test_bad_status_drops_connection_without_reply(echo_server: RunningServer) -> None:
    with socket.create_connection((LOCAL, echo_server.port("http-echo")), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /echo?status=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536) == b""


def test_malformed_request_gets_400(echo_server: RunningServer) -> None:
    with socket.create_connection((LOCAL, echo_server.port("http-echo")), timeout=WAIT_S) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_debug_dump(echo_server: RunningServer) -> None:
    response, body = request(echo_server.port("http-echo"), "GET", "/debug?a=b",
                             headers={"X-Custom": "v"})
    text = body.decode()
    assert response.status == 200
    assert "GET /debug?a=b HTTP/1.1" in text
    assert "\nX-Custom: v" in text
    assert f"request from {LOCAL}:" in text


def test_idle_keep_alive_connection_is_closed(server_factory: Factory) -> None:
    running = server_factory(echo_config(idle_timeout_s=0.2))
    with socket.create_connection((LOCAL, running.port("http-echo")), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(65536) == b""  # server closes the idle connection
        assert time.monotonic() - start < 5.0


def test_multi_forwards_path_query_and_headers(server_factory: Factory,
                                               echo_server: RunningServer) -> None:
    target_port = echo_server.port("http-echo")
    multi = _multi(server_factory, f"http://{LOCAL}:{target_port}/")
    port = multi.port("multi-0")
    response, body = request(port, "GET", "/debug?x=1&y=two", headers={"X-Request-Id": "r-1"})
    text = body.decode()
    assert response.status == 200
    assert "GET /debug?x=1&y=two HTTP/1.1" in text
    assert f"Host: {LOCAL}:{target_port}" in text
    assert "\nX-Request-Id: r-1" in text
    assert "\nX-Fortio-Multi-Id: 1" in text
    assert f"\nX-On-Behalf-Of: {LOCAL}:" in text
    assert "\nX-Proxy-Agent: fortio.org/fortio-" in text
    response, body = request(port, "GET", "/echo?status=418&size=10")
    assert (response.status, len(body)) == (418, 10)
    response, body = request(port, "POST", "/echo", b"through")
    assert (response.status, body) == (200, b"through")


def test_multi_reuses_target_connections(server_factory: Factory,
                                         echo_server: RunningServer) -> None:
    multi = _multi(server_factory, f"http://{LOCAL}:{echo_server.port('http-echo')}")
    port = multi.port("multi-0")
    peers = set()
    for _ in range(5):
        _, body = request(port, "GET", "/debug")
        peers.add(body.decode().split(" - request from ")[1].split("\n")[0])
    assert len(peers) == 1  # the same pooled source port every time
    request(port, "GET", "/echo?close=true")  # target closes this one: it leaves the pool
    response, _ = request(port, "GET", "/echo")
    assert response.status == 200


def test_multi_parallel_concatenates_bodies(server_factory: Factory,
                                            echo_server: RunningServer) -> None:
    url = f"http://{LOCAL}:{echo_server.port('http-echo')}"
    multi = _multi(server_factory, url, url)
    response, body = request(multi.port("multi-0"), "POST", "/echo", b"ab")
    assert (response.status, body) == (200, b"abab")


def test_multi_target_down_is_503_with_go_error(server_factory: Factory,
                                                echo_server: RunningServer) -> None:
    dead_port = free_port()
    dead = f"http://{LOCAL}:{dead_port}"
    alive = f"http://{LOCAL}:{echo_server.port('http-echo')}"
    multi = _multi(server_factory, alive, dead)
    response, body = request(multi.port("multi-0"), "POST", "/echo?a=1", b"ok")
    assert response.status == 503
    url = f"{dead}/echo?a=1"
    assert body == (f'okError for {url}: Post "{url}": dial tcp {LOCAL}:{dead_port}: connect: '
                    "connection refused\n").encode()


def test_multi_serial_mode_uses_first_status(server_factory: Factory,
                                             echo_server: RunningServer) -> None:
    alive = f"http://{LOCAL}:{echo_server.port('http-echo')}"
    multi = _multi(server_factory, alive, f"http://{LOCAL}:{free_port()}", multi_serial=True)
    response, body = request(multi.port("multi-0"), "GET", "/echo")
    assert response.status == 200
    assert b"connection refused" in body


def test_multi_target_timeout(server_factory: Factory, echo_server: RunningServer) -> None:
    multi = _multi(server_factory, f"http://{LOCAL}:{echo_server.port('http-echo')}",
                   timeout_s=0.2)
    start = time.monotonic()
    response, body = request(multi.port("multi-0"), "GET", "/echo?delay=400ms")
    assert response.status == 503
    assert b"context deadline exceeded (Client.Timeout exceeded while awaiting headers)" in body
    assert time.monotonic() - start < 2.0


def test_multi_unknown_host(server_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host == "unresolvable.test":  # never ask a real resolver
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    multi = _multi(server_factory, "http://unresolvable.test:8080")
    response, body = request(multi.port("multi-0"), "GET", "/echo")
    assert response.status == 503
    assert body == (b'Error for http://unresolvable.test:8080/echo: Get '
                    b'"http://unresolvable.test:8080/echo": dial tcp: lookup unresolvable.test: '
                    b'no such host\n')


def test_tcp_udp_grpc_and_redirect_listeners(server_factory: Factory) -> None:
    running = server_factory(echo_config(tcp=local(), udp=local(), grpc=local(),
                                         redirect=local()))
    with socket.create_connection((LOCAL, running.port("tcp-echo")), timeout=WAIT_S) as sock:
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # fortio closes after the client's EOF
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(WAIT_S)
        udp.sendto(b"dgram", (LOCAL, running.port("udp-echo")))
        assert udp.recvfrom(100)[0] == b"dgram"
    with socket.create_connection((LOCAL, running.port("grpc-ping")), timeout=WAIT_S):
        pass  # gRPC is not implemented: the port only accepts TCP
    response, _ = request(running.port("https-redirect"), "GET", "/x?y", headers={"Host": "h"})
    assert response.status == 303
    assert response.getheader("Location") == "https://h/x?y"


def test_port_in_use_is_a_lab_error(server_factory: Factory) -> None:
    with socket.socket() as busy:
        busy.bind((LOCAL, 0))
        busy.listen()
        with pytest.raises(LabError, match="http-echo: cannot listen"):
            server_factory(echo_config(http=ListenSpec(LOCAL, busy.getsockname()[1])))


def test_non_ascii_header_argument_is_sent_as_utf8(echo_server: RunningServer) -> None:
    with socket.create_connection((LOCAL, echo_server.port("http-echo")), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /echo?header=X-Name:%C3%A9t%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk
            head += chunk
    assert "X-Name: été\r\n".encode() in head
