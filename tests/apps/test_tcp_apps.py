"""``meshlab.apps.tcp_echo`` (controllable half-close) and ``meshlab.apps.tcp_client`` on real
loopback sockets: the building blocks of the half-close and conntrack suites."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fortio_support import LOCAL, WAIT_S, free_port, wait_port

from meshlab.apps.netutil import ListenSpec
from meshlab.apps.tcp_echo import EchoServer, start_tcp_echo

REPO = Path(__file__).resolve().parents[2]


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _echo_process(procs: list[subprocess.Popen[str]], *extra: str) -> int:
    port = free_port()
    procs.append(_popen("meshlab.apps.tcp_echo", "--port", str(port), "--host", LOCAL, *extra))
    wait_port(port)
    return port


def _echoed(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` and read it back (proves the server accepted and echoes)."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(100)
        assert chunk, "server closed before echoing"
        got += chunk
    assert got == data


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT_S)
    data = b""
    while chunk := sock.recv(100):
        data += chunk
    return data


# -- tcp_echo ---------------------------------------------------------------------------------

def test_echo_closes_after_client_eof(spawn: list[subprocess.Popen[str]]) -> None:
    port = _echo_process(spawn)
    with socket.create_connection((LOCAL, port), timeout=WAIT_S) as sock:
        _echoed(sock, b"hello")
        sock.shutdown(socket.SHUT_WR)
        assert _read_to_eof(sock) == b""  # default: the server closes after the client's FIN


def test_sigusr1_half_closes_every_open_connection(spawn: list[subprocess.Popen[str]]) -> None:
    port = _echo_process(spawn)
    conns = [socket.create_connection((LOCAL, port), timeout=WAIT_S) for _ in range(2)]
    try:
        for i, sock in enumerate(conns):
            _echoed(sock, f"c{i}".encode())
        spawn[0].send_signal(signal.SIGUSR1)
        for sock in conns:
            assert _read_to_eof(sock) == b""  # the server's FIN
        # our write side stays open: the server reads and discards, nothing comes back
        conns[0].sendall(b"after the server's FIN")
        conns[0].shutdown(socket.SHUT_WR)
        assert _read_to_eof(conns[0]) == b""
    finally:
        for sock in conns:
            sock.close()
    assert spawn[0].poll() is None  # SIGUSR1 did not kill it
    spawn[0].send_signal(signal.SIGTERM)
    _, err = spawn[0].communicate(timeout=WAIT_S)
    assert spawn[0].returncode == 0
    assert "half-closed 2 connection(s)" in err


def test_fin_after_s(spawn: list[subprocess.Popen[str]]) -> None:
    port = _echo_process(spawn, "--fin-after-s", "0.3")
    with socket.create_connection((LOCAL, port), timeout=WAIT_S) as sock:
        start = time.monotonic()
        _echoed(sock, b"x")
        assert _read_to_eof(sock) == b""
        assert time.monotonic() - start >= 0.25


def test_half_closed_connection_is_tracked_until_the_peer_closes() -> None:
    """In-process: ``half_close_all`` shuts each open connection once, and a connection leaves
    ``open`` only when the peer closes."""
    handler = EchoServer()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start_tcp_echo(ListenSpec(LOCAL, 0), handler))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(fn):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(_call(fn), loop).result(WAIT_S)

    try:
        with socket.create_connection((LOCAL, port), timeout=WAIT_S) as sock:
            _echoed(sock, b"ping")
            assert on_loop(handler.half_close_all) == 1
            assert on_loop(handler.half_close_all) == 0  # already shut
            assert _read_to_eof(sock) == b""
            sock.sendall(b"discarded")
            assert on_loop(lambda: len(handler.open)) == 1
            assert "half_closed=1" in repr(handler)
        deadline = time.monotonic() + WAIT_S
        while on_loop(lambda: len(handler.open)) and time.monotonic() < deadline:
            time.sleep(0.02)  # poll interval
        assert on_loop(lambda: (len(handler.open), len(handler.half_closed))) == (0, 0)
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


async def _call(fn):  # type: ignore[no-untyped-def]
    return fn()


def test_echo_bad_fin_after_exits_2() -> None:
    res = subprocess.run([sys.executable, "-m", "meshlab.apps.tcp_echo", "--fin-after-s", "-1"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and "--fin-after-s" in res.stderr


# -- tcp_client -------------------------------------------------------------------------------

def _client(tmp_path: Path, *args: str) -> tuple[int, dict, list[dict]]:
    result = tmp_path / "result.json"
    res = subprocess.run([sys.executable, "-m", "meshlab.apps.tcp_client", *args,
                          "--result", str(result)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    return res.returncode, json.loads(result.read_text()), events


def test_client_reads_to_eof_then_closes_late(spawn: list[subprocess.Popen[str]],
                                              tmp_path: Path) -> None:
    port = _echo_process(spawn, "--fin-after-s", "0.2")
    code, result, events = _client(tmp_path, "--connect", f"{LOCAL}:{port}", "--send", "hi",
                                   "--close-delay-s", "0.5")
    assert code == 0 and result["error"] is None, result
    assert set(result) >= {"connect_s", "local_port", "eof_after_s", "closed_at_epoch_s",
                           "error"}
    assert 0 <= result["connect_s"] < WAIT_S
    assert result["received_bytes"] == 2  # the echo of "hi" before the server's FIN
    assert 0.1 <= result["eof_after_s"] < WAIT_S
    by_event = {e["event"]: e for e in events}
    assert by_event["connected"]["local_port"] == result["local_port"]
    assert by_event["received"]["received_bytes"] == 2
    assert result["closed_at_epoch_s"] - by_event["eof"]["t_epoch_s"] >= 0.45  # closed late
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_client_bind_port_and_hold_expiry(spawn: list[subprocess.Popen[str]],
                                          tmp_path: Path) -> None:
    port, local = _echo_process(spawn), free_port()
    code, result, _ = _client(tmp_path, "--connect", f"{LOCAL}:{port}", "--bind-port", str(local),
                              "--hold-s", "0.3")
    assert code == 0 and result["error"] is None, result
    assert result["local_port"] == local
    assert result["eof_after_s"] is None  # the echo server never sent FIN


def test_client_connect_error_is_recorded(tmp_path: Path) -> None:
    code, result, _ = _client(tmp_path, "--connect", f"{LOCAL}:{free_port()}",
                              "--connect-timeout-s", "2")
    assert code == 1
    assert result["error_phase"] == "connect" and result["error"].startswith("connect: ")
    assert result["connect_s"] is None and result["closed_at_epoch_s"] > 0


def test_client_sigterm_still_writes_result(spawn: list[subprocess.Popen[str]],
                                            tmp_path: Path) -> None:
    port, result = _echo_process(spawn), tmp_path / "r.json"
    proc = _popen("meshlab.apps.tcp_client", "--connect", f"{LOCAL}:{port}", "--hold-s", "30",
                  "--result", str(result))
    spawn.append(proc)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "connected"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 1
    assert json.loads(result.read_text())["error"] == "terminated by SIGTERM"


@pytest.mark.parametrize("args", [["--connect", "nohostport"], ["--connect", "h:1", "--hold-s", "-1"],
                                  ["--connect", "h:1", "--bind-port", "70000"]])
def test_client_bad_arguments_exit_2(args: list[str]) -> None:
    res = subprocess.run([sys.executable, "-m", "meshlab.apps.tcp_client", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
