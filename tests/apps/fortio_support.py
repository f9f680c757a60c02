"""Helpers for the fortio-compatible app tests: in-process servers on 127.0.0.1 ephemeral ports.

Servers run on their own asyncio loop in a background thread so tests can use plain blocking
clients (``http.client``, ``socket``). Every wait is bounded by a timeout; readiness is the
return of ``FortioServer.start()`` (the listeners are bound), never a sleep.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass

from meshlab.apps.fortio_query import EchoLimits
from meshlab.apps.fortio_replies import EchoConfig
from meshlab.apps.fortio_server import FortioConfig, FortioServer
from meshlab.apps.netutil import ListenSpec

LOCAL = "127.0.0.1"
WAIT_S = 10.0


@dataclass
class RunningServer:
    """A started FortioServer and the loop thread that runs it."""

    server: FortioServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    def port(self, name: str) -> int:
        return self.server.addresses[name][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "server loop did not stop"
        self.loop.close()


def local(port: int = 0) -> ListenSpec:
    """Listen spec on 127.0.0.1 (port 0: ephemeral)."""
    return ListenSpec(LOCAL, port)


def start_server(config: FortioConfig, seed: int = 1234) -> RunningServer:
    """Start ``config`` in a background loop and wait (bounded) until every port is bound."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="fortio-test-loop")
    thread.start()
    server = FortioServer(config, rng=random.Random(seed))
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(WAIT_S)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()
        raise
    return RunningServer(server, loop, thread)


def echo_config(**overrides: object) -> FortioConfig:
    """Only the http-echo listener on an ephemeral port, small caps to keep tests fast."""
    limits = EchoLimits(max_delay_s=0.5, max_payload_bytes=64 * 1024)
    config = FortioConfig(http=local(), grpc=None, tcp=None, udp=None, redirect=None,
                          echo=EchoConfig.create(limits))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config



def request(port: int, method: str, target: str, body: bytes | None = None,
            headers: dict[str, str] | None = None,
            conn: http.client.HTTPConnection | None = None,
            ) -> tuple[http.client.HTTPResponse, bytes]:
    """One HTTP request to 127.0.0.1:``port`` (on ``conn`` when given); returns response+body."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(LOCAL, port, timeout=WAIT_S)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        if own:
            conn.close()


def free_port() -> int:
    """A port that was free a moment ago (for subprocess servers that need it up front)."""
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = WAIT_S) -> None:
    """Poll until 127.0.0.1:``port`` accepts a TCP connection (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((LOCAL, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not accepting after {timeout_s}s") from None
            time.sleep(0.02)  # poll interval, not synchronisation
