"""``python -m meshlab.apps.fortio`` and ``python -m meshlab.apps.tcp_echo`` argument handling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fortio_support import LOCAL, WAIT_S, free_port, request, wait_port

from meshlab.apps import fortio
from meshlab.apps.fortio_server import FortioConfig
from meshlab.apps.netutil import ListenSpec
from meshlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DISABLED = ["-grpc-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled",
            "-redirect-port", "disabled"]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def _config(*args: str) -> FortioConfig:
    command, values = fortio.parse_args(list(args))
    return fortio.build_config(command, values)


def test_manifest_args_parse() -> None:
    config = _config("server", "-M", "8070 http://fortio-server-l2:8080")
    assert config.http == ListenSpec(None, 8080)
    assert config.grpc == ListenSpec(None, 8079)
    (multi,) = config.multis
    assert multi.listen == ListenSpec(None, 8070)
    assert multi.targets[0].host == "fortio-server-l2" and multi.targets[0].port == 8080


def test_go_flag_syntax() -> None:
    config = _config("server", "--http-port=127.0.0.1:9", "-grpc-port", "disabled",
                     "-M", "[::1]:0 a:1 http://b:2/p/", "-M=7 c", "-multi-serial-mode",
                     "-multi-mirror-origin=false", "-max-echo-delay", "3s",
                     "-maxpayloadsizekb=1", "-timeout", "500ms")
    assert config.http == ListenSpec("127.0.0.1", 9) and config.grpc is None
    assert [len(m.targets) for m in config.multis] == [2, 1]
    assert config.multis[0].listen == ListenSpec("::1", 0)
    assert config.multis[0].targets[1].base_url == "http://b:2/p/"  # no mirror: kept as is
    assert config.multi_serial and not config.mirror_origin
    assert config.echo.limits.max_delay_s == 3.0
    assert config.echo.limits.max_payload_bytes == 1024
    assert config.timeout_s == 0.5


def test_proxies_command_runs_only_multis() -> None:
    config = _config("proxies", "-M", "8070 x:1")
    assert (config.http, config.grpc, config.tcp, config.udp, config.redirect) == (None,) * 5


@pytest.mark.parametrize(("args", "message"), [
    ([], "missing command"),
    (["load", "http://x"], "unknown or unsupported command 'load'"),
    (["server", "-nope"], "flag provided but not defined: -nope"),
    (["server", "-M"], "flag needs an argument: -M"),
    (["server", "extra"], "too many arguments"),
    (["server", "-P", "8000 x:1"], "-P (TCP proxies) is not supported"),
    (["server", "-multi-serial-mode=maybe"], "invalid boolean value"),
    (["server", "-timeout", "5"], "not a duration"),
    (["server", "-M", "8070"], "invalid syntax for -M"),
    (["server", "-M", "8070 https://x"], "only http:// targets"),
    (["server", "-http-port", "/tmp/sock"], "Unix domain sockets are not supported"),
    (["server", "-http-port", "99999"], "expected port"),
    (["proxies"], "needs at least one -M"),
])
def test_bad_args_raise_config_error(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fortio.build_config(*fortio.parse_args(args))


def test_main_returns_2_and_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert fortio.main(["server", "-bogus"]) == 2
    assert "fortio: error: flag provided but not defined: -bogus" in capsys.readouterr().err
    assert fortio.main(["server", "-loglevel", "loud"], runner=lambda cfg: None) == 2
    assert fortio.main(["-h"]) == 0
    assert "-http-port" in capsys.readouterr().out


def test_unknown_flag_exits_2_in_a_process() -> None:
    result = _run_cli("meshlab.apps.fortio", "server", "-no-such-flag")
    assert result.returncode == 2
    assert "flag provided but not defined: -no-such-flag" in result.stderr


def test_tcp_echo_bad_port_exits_2() -> None:
    result = _run_cli("meshlab.apps.tcp_echo", "--port", "70000")
    assert result.returncode == 2
    assert "not a TCP port" in result.stderr


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_server_process_multi_end_to_end(spawn: list[subprocess.Popen[str]]) -> None:
    echo_port, multi_port = free_port(), free_port()
    proc = _popen("meshlab.apps.fortio", "server", "-http-port", f"{LOCAL}:{echo_port}",
                  *DISABLED, "-M", f"{LOCAL}:{multi_port} http://{LOCAL}:{echo_port}")
    spawn.append(proc)
    wait_port(multi_port)
    wait_port(echo_port)
    response, body = request(multi_port, "GET", "/echo?status=429:100&size=5")
    assert (response.status, len(body)) == (429, 5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
    assert "All fortio meshlab-" in stderr
    assert f"multi-0 server listening on {LOCAL}:{multi_port}" in stderr


def test_port_in_use_exits_1(spawn: list[subprocess.Popen[str]]) -> None:
    with socket.socket() as busy:
        busy.bind((LOCAL, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_cli("meshlab.apps.fortio", "server", "-http-port", f"{LOCAL}:{port}",
                          *DISABLED)
    assert result.returncode == 1
    assert "http-echo: cannot listen" in result.stderr


def test_tcp_echo_process(spawn: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    proc = _popen("meshlab.apps.tcp_echo", "--port", str(port), "--host", LOCAL)
    spawn.append(proc)
    wait_port(port)
    with socket.create_connection((LOCAL, port), timeout=WAIT_S) as sock:
        sock.sendall(b"hello")
        received = b""
        while len(received) < 5:
            chunk = sock.recv(100)
            assert chunk
            received += chunk
        assert received == b"hello"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
