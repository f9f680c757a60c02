"""Helpers of the TCP proxy / tcp_stats lab tests: admin stats, ``ss`` and polling, in-process.

Sockets are opened from inside the lab namespaces with
:func:`meshlab.envs.local.veth_pair.connect_in_netns` (a thread that ``setns``-es), so a test can
hold a half-closed connection open while it inspects both namespaces.
"""

from __future__ import annotations

import subprocess

from meshlab.envs.local.veth_pair import connect_in_netns

ECHO_VIP = ("10.96.0.14", 9000)
ECHO_CLUSTER = "outbound|9000||echo.mark.svc.cluster.local"
ALL_STATS = [r"cluster\..*", r"tcp\..*", r"listener\..*", r"http\..*"]



def admin_stats(ns: str) -> dict[str, int]:
    """Counters and gauges of the sidecar admin (127.0.0.1:15000 in ``ns``), by raw name."""
    with connect_in_netns(ns, ("127.0.0.1", 15000)) as s:
        s.sendall(b"GET /stats HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        chunks = []
        for _ in range(10000):
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    body = b"".join(chunks).decode().split("\r\n\r\n", 1)[1]
    out = {}
    for line in body.splitlines():
        name, _, value = line.rpartition(": ")
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def stat(ns: str, name: str) -> int | None:
    """The value of counter/gauge ``name`` (exact raw name) on ``ns``'s sidecar, or None."""
    return admin_stats(ns).get(name)



def ss(ns: str, *filters: str) -> list[str]:
    """``ss -tanop [filters]`` lines (no header) inside ``ns``."""
    res = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tanopH", *filters],
                         capture_output=True, text=True, timeout=10, check=True)
    return [line for line in res.stdout.splitlines() if line.strip()]


def recv_until(sock, marker: bytes, timeout_s: float = 10.0) -> tuple[bytes, bool]:  # type: ignore[no-untyped-def]
    """Read until ``marker`` is in the data or EOF; returns (data, eof)."""
    sock.settimeout(timeout_s)
    data = b""
    for _ in range(100000):
        if marker and marker in data:
            return data, False
        chunk = sock.recv(65536)
        if not chunk:
            return data, True
        data += chunk
    return data, False
