"""Fixtures for the load tests: a real HTTP/1.1 target on 127.0.0.1 and a local Shell.

Only 127.0.0.1 is ever targeted. Every load a test starts is bounded by a request count and/or a
duration of a few seconds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from meshlab.envs.base import CommandResult, run_argv
from meshlab.errors import LabError

RUNNER = [sys.executable, "-m", "meshlab.load.locust_runner"]


class LocalProcessShell:
    """A :class:`~meshlab.envs.base.Shell` that runs argv directly on this host (no netns)."""

    name = "local-process"

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Run ``argv`` to completion (see :meth:`Shell.run`)."""
        return run_argv(argv, check=check, timeout_s=timeout_s, input_text=input_text)

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background (see :meth:`Shell.popen`)."""
        if user is not None:
            raise LabError("LocalProcessShell cannot switch users")
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115
        err = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            for fh in (out, err):
                if not isinstance(fh, int):
                    fh.close()


class TargetServer:
    """Thread-per-connection HTTP/1.1 keep-alive server on 127.0.0.1 (GET only, no bodies).

    Query parameters of the request: ``delay_us=N`` sleeps N µs before answering;
    ``fail_every=K`` answers 503 to every K-th request this server handled (counted since the
    last :meth:`reset`), 200 otherwise; ``hang_up=1`` closes the connection without answering
    (not counted).

    Attributes:
        port: the bound TCP port.
        status_counts: responses sent per status since the last reset.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._handled = 0
        self.status_counts: Counter[int] = Counter()
        self._closed = False
        threading.Thread(target=self._accept_loop, name="target-accept", daemon=True).start()

    def __repr__(self) -> str:
        return f"TargetServer(port={self.port}, handled={self.total})"

    @property
    def total(self) -> int:
        """Responses sent since the last reset."""
        with self._lock:
            return sum(self.status_counts.values())

    def url(self, **params: Any) -> str:
        """URL of this server with the given query parameters."""
        query = f"?{urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.port}/target{query}"

    def reset(self) -> None:
        """Forget counts (the next request is number 1 for ``fail_every``)."""
        with self._lock:
            self._handled = 0
            self.status_counts = Counter()

    def close(self) -> None:
        """Stop accepting connections."""
        self._closed = True
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                params = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                if "delay_us" in params:
                    time.sleep(int(params["delay_us"]) / 1e6)
                if params.get("hang_up") == "1":
                    return  # close without a response: the client sees the connection drop
                with self._lock:
                    self._handled += 1
                    every = int(params.get("fail_every", 0))
                    status = 503 if every and self._handled % every == 0 else 200
                    self.status_counts[status] += 1
                reason = b"OK" if status == 200 else b"Service Unavailable"
                try:
                    conn.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 2\r\n\r\nok" % (status, reason))
                except OSError:
                    return


@pytest.fixture(scope="session")
def _target_server() -> Iterator[TargetServer]:
    server = TargetServer()
    yield server
    server.close()


@pytest.fixture
def target(_target_server: TargetServer) -> TargetServer:
    """The shared target server, with counts reset for this test."""
    _target_server.reset()
    return _target_server


@pytest.fixture
def shell() -> LocalProcessShell:
    """A Shell running commands directly on this host."""
    return LocalProcessShell()


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


RunnerCall = Callable[..., tuple[subprocess.CompletedProcess[str], float]]


@pytest.fixture
def runner() -> RunnerCall:
    """Run the runner module: ``runner(*args, timeout_s=30)`` -> (process, wall time in s)."""

    def call(*args: str, timeout_s: float = 30.0) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        proc = subprocess.run([*RUNNER, *args], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        return proc, time.monotonic() - start

    return call
