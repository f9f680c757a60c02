"""``-meshlab-idle-race`` over real sockets on 127.0.0.1: a request after the idle limit gets a RST.

The idle periods below are the behaviour under test (a keep-alive connection left unused), not
waits for something to happen; every read is bounded by the socket timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from fortio_support import LOCAL, WAIT_S, RunningServer, echo_config

from meshlab.apps import fortio

Factory = Callable[..., RunningServer]
RACE_S = 0.3
REQUEST = b"GET /echo?size=10 HTTP/1.1\r\nHost: x\r\n\r\n"


def _exchange(sock: socket.socket) -> bytes:
    """Send one request and read its whole (small) response."""
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 10:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _idle(seconds: float) -> None:
    time.sleep(seconds)  # the connection's idle period is the behaviour under test


@pytest.fixture
def race_port(server_factory: Factory) -> int:
    return server_factory(echo_config(idle_race_s=RACE_S)).port("http-echo")


def test_cli_flag_sets_the_race_limit() -> None:
    command, values = fortio.parse_args(["server", "-meshlab-idle-race", "250ms"])
    assert fortio.build_config(command, values).idle_race_s == 0.25
    command, values = fortio.parse_args(["server"])
    assert fortio.build_config(command, values).idle_race_s == 0.0


def test_requests_within_the_limit_are_served(race_port: int) -> None:
    with socket.create_connection((LOCAL, race_port), timeout=WAIT_S) as sock:
        for _ in range(3):
            assert _exchange(sock).startswith(b"HTTP/1.1 200")


def test_request_after_the_limit_gets_a_reset(race_port: int) -> None:
    with socket.create_connection((LOCAL, race_port), timeout=WAIT_S) as sock:
        assert _exchange(sock).startswith(b"HTTP/1.1 200")
        _idle(RACE_S + 0.1)
        sock.sendall(REQUEST)
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)  # RST, no response byte


def test_first_request_of_a_connection_is_never_raced(race_port: int) -> None:
    with socket.create_connection((LOCAL, race_port), timeout=WAIT_S) as sock:
        _idle(RACE_S + 0.1)
        assert _exchange(sock).startswith(b"HTTP/1.1 200")


def test_server_idle_timeout_still_closes_with_fin(server_factory: Factory) -> None:
    running = server_factory(echo_config(idle_race_s=0.1, idle_timeout_s=0.3))
    with socket.create_connection((LOCAL, running.port("http-echo")), timeout=WAIT_S) as sock:
        assert _exchange(sock).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(65536) == b""  # the ordinary idle timer's FIN, not a RST
        assert 0.25 <= time.monotonic() - start < 5.0
