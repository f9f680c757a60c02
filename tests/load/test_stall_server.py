"""The stall server of ``benchmarks/_stall_server.py``: its computed distribution and its pause.

The server is the one ``benchmarks/load.py`` measures the open-loop engine against; tests of the
engine import it the same way (:func:`load_stall_server`). Only 127.0.0.1 is targeted.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from meshlab.errors import ConfigError
from meshlab.polling import wait_until

STALL_SERVER = Path(__file__).resolve().parents[2] / "benchmarks" / "_stall_server.py"


def load_stall_server() -> ModuleType:
    """Import ``benchmarks/_stall_server.py`` (benchmarks is not a package)."""
    if "_stall_server" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_stall_server", STALL_SERVER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["_stall_server"] = module  # dataclasses resolve annotations through it
        spec.loader.exec_module(module)
    return sys.modules["_stall_server"]


ss = load_stall_server()


@pytest.mark.parametrize("rate", [200.0, 1000.0, 5000.0])
def test_one_stall_percentiles_follow_the_closed_form(rate: float) -> None:
    """One pause of S in D seconds: p-th percentile = S - (1 - p/100)·D, whatever the rate."""
    duration_s, stall_s = 10.0, 0.5
    n = int(rate * duration_s)
    got = ss.expected_percentiles(rate, n, ss.StallPlan(stall_at=(n // 2,), stall_s=stall_s))
    for key, pct in (("p99", 99.0), ("p999", 99.9)):
        want_us = (stall_s - (1 - pct / 100) * duration_s) * 1e6
        assert got[key] == pytest.approx(want_us, rel=2e-3, abs=1e6 / rate)
    assert got["max"] == pytest.approx(stall_s * 1e6, rel=1e-3)
    assert got["p50"] == 1  # unpaused requests: zero service time (clamped to 1 µs)


def test_overlapping_stalls_extend_the_pause() -> None:
    """A stall starting inside another pauses until max(end, now + stall_s)."""
    plan = ss.StallPlan(stall_at=(1, 3), stall_s=0.004)  # 1 ms period: 2nd starts at 2 ms
    lat = ss.expected_latencies_us(1000.0, 8, plan)
    assert lat == pytest.approx([4000, 3000, 4000, 3000, 2000, 1000, 0, 0])


def test_bad_plan_names_the_field() -> None:
    with pytest.raises(ConfigError, match="stall_at"):
        ss.StallPlan(stall_at=(0,), stall_s=0.1)
    with pytest.raises(ConfigError, match="stall_s"):
        ss.StallPlan(stall_at=(1,), stall_s=0.0)


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = sock.recv(4096)
        assert chunk, "server closed the connection"
        data += chunk
    return data


def test_server_holds_every_response_during_the_pause() -> None:
    """Request 3 starts a 300 ms pause; request 4 on another connection waits for its end."""
    plan = ss.StallPlan(stall_at=(3,), stall_s=0.3)
    with ss.serve_in_thread(plan) as server:
        a = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with a, b:
            for _ in range(2):
                t0 = time.monotonic()
                assert _get(a).startswith(b"HTTP/1.1 200 OK")
                assert time.monotonic() - t0 < 0.2
            a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # request 3: pauses the server
            wait_until(lambda: server.stalls, timeout_s=5, every_s=0.005,
                       what="stall server paused at request 3")
            t0 = time.monotonic()
            _get(b)  # request 4 arrives during the pause
            waited_s = time.monotonic() - t0
            assert a.recv(4096).endswith(b"ok")
        assert server.requests == 4
        stall = server.stalls[0]
        assert stall["at_request"] == 3
        assert 0.2 < waited_s < 0.3 + 0.2
