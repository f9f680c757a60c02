"""Fixtures for the app tests (fortio helpers live in ``fortio_support``)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
from fortio_support import WAIT_S, FortioConfig, RunningServer, echo_config, start_server


@pytest.fixture
def server_factory() -> Iterator[Callable[..., RunningServer]]:
    """Start servers with :func:`start_server`; all are stopped at teardown."""
    started: list[RunningServer] = []

    def factory(config: FortioConfig, seed: int = 1234) -> RunningServer:
        running = start_server(config, seed)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        running.stop()


@pytest.fixture
def echo_server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    """A running echo server (http-echo only)."""
    return server_factory(echo_config())



@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; SIGTERMed (then killed) at teardown, by their own pid."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=WAIT_S)
