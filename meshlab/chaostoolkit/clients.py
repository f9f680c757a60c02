"""Groups of TCP app clients (:mod:`meshlab.apps.tcp_client`) started in a pod, for the TCP
scenarios (half-close, conntrack expiry) where the "load" is long-lived app connections.

Each client runs as the pod's app would (not as uid 1337), so Istio's capture redirects its
connection to the sidecar's outbound listener (15001) and the sidecar's TCP proxy carries it.
Every client is bounded: it closes after ``hold_s`` (or the peer's FIN) plus ``close_delay_s``,
and :func:`finish` stops it with SIGTERM (the client closes at once and writes its result).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab.errors import ConfigError

CLIENT_MODULE = "meshlab.apps.tcp_client"
MAX_CLIENTS = 100
MAX_HOLD_S = 3600.0
STOP_GRACE_S = 5.0


@dataclass
class ClientGroup:
    """Clients started together.

    Attributes:
        name: the group's name.
        pod: the pod they run in.
        procs: their processes.
        result_paths: each client's ``--result`` file.
        deadline_s: monotonic time by which every client has exited by itself.
    """

    name: str
    pod: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    result_paths: list[Path] = field(default_factory=list)
    deadline_s: float = 0.0


def start(shell: Any, name: str, connect: str, count: int, out_dir: Path, *,
          send: str = "hello", close_delay_s: float = 0.0, hold_s: float = 60.0,
          bind_port: int | None = None, connect_timeout_s: float = 5.0) -> ClientGroup:
    """Start ``count`` clients connecting to ``connect`` from the shell's pod.

    Args:
        shell: the pod's Shell.
        name: group name (file names ``tcp-<name>-<i>.json``).
        connect: ``host:port`` as the pod sees it, e.g. ``tcp-echo:9000``.
        count: clients (1..100).
        out_dir: folder for the result files.
        send: text each client sends after connecting.
        close_delay_s: seconds a client waits after the peer's FIN before ``close()``.
        hold_s: longest wait for the peer's FIN, in seconds.
        bind_port: first local port (client i binds ``bind_port + i``), None = ephemeral.
        connect_timeout_s: connect() timeout in seconds.

    Raises:
        ConfigError: an option out of range (names it).
        LabError: a client could not be started.
    """
    if not isinstance(count, int) or not 1 <= count <= MAX_CLIENTS:
        raise ConfigError(f"count: expected 1..{MAX_CLIENTS} clients, got {count!r}")
    for key, value in (("close_delay_s", close_delay_s), ("hold_s", hold_s)):
        if not isinstance(value, int | float) or not 0 <= value <= MAX_HOLD_S:
            raise ConfigError(f"{key}: expected 0..{MAX_HOLD_S:.0f} s, got {value!r}")
    group = ClientGroup(name=name, pod=shell.name)
    group.deadline_s = time.monotonic() + connect_timeout_s + hold_s + close_delay_s + 10
    for i in range(count):
        path = out_dir / f"tcp-{name}-{i}.json"
        path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", CLIENT_MODULE, "--connect", connect, "--send", send,
                "--close-delay-s", repr(float(close_delay_s)), "--hold-s", repr(float(hold_s)),
                "--connect-timeout-s", repr(float(connect_timeout_s)), "--result", str(path)]
        if bind_port is not None:
            argv += ["--bind-port", str(bind_port + i)]
        group.procs.append(shell.popen(argv, stderr=path.with_suffix(".stderr")))
        group.result_paths.append(path)
    return group


def finish(group: ClientGroup, wait: bool) -> list[dict[str, Any]]:
    """Wait for the clients to end by themselves (``wait``) or stop them now, and read their
    results (a client without a result file is reported with ``error``)."""
    for proc in group.procs:
        if not wait and proc.poll() is None:
            proc.terminate()
    results = []
    for proc, path in zip(group.procs, group.result_paths, strict=True):
        limit_s = max(0.0, group.deadline_s - time.monotonic()) if wait else STOP_GRACE_S
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            results.append({"error": f"no result ({exc})", "error_phase": "result"})
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"clients", "connected", "eof", "errors", "error_phases": {phase: n}, "local_ports"}``."""
    return {"clients": len(results),
            "connected": sum(r.get("connect_s") is not None for r in results),
            "eof": sum(r.get("eof_after_s") is not None for r in results),
            "errors": sum(bool(r.get("error")) for r in results),
            "error_phases": dict(Counter(r["error_phase"] for r in results
                                         if r.get("error_phase"))),
            "local_ports": [r.get("local_port") for r in results]}
