"""Numbered UDP datagrams between two lab pods, for the fault tests (UDP is not captured by the
Istio rules, so datagrams go straight from the sender's socket to the receiver's)."""

from __future__ import annotations

import socket
import time

from meshlab.envs.local.netns_socket import netns_socket


def udp_sequence(env, sender: str, receiver: str, n: int, port: int,
                 gap_s: float = 0.0, quiet_s: float = 1.0) -> list[int]:
    """Send datagrams ``0..n-1`` from pod ``sender`` to pod ``receiver``; the numbers that
    arrived, in arrival order, duplicates included. Received until none came for ``quiet_s``
    (a fault's agent may hold or lag packets on a busy machine), at most 5 s after the last
    send. ``gap_s`` spaces the sends."""
    rx = netns_socket(env.pod_shell(receiver).netns, socket.AF_INET, socket.SOCK_DGRAM)
    tx = netns_socket(env.pod_shell(sender).netns, socket.AF_INET, socket.SOCK_DGRAM)
    seen: list[int] = []

    def drain() -> None:
        while True:
            try:
                seen.append(int(rx.recv(64, socket.MSG_DONTWAIT)))
            except BlockingIOError:
                return

    with rx, tx:
        rx.bind((env.pod(receiver).ip, port))
        for i in range(n):
            tx.sendto(str(i).encode(), (env.pod(receiver).ip, port))
            if i % 20 == 19:
                drain()
            if gap_s:
                time.sleep(gap_s)
        deadline, last_change, count = time.monotonic() + 5, time.monotonic(), -1
        while time.monotonic() < deadline and time.monotonic() - last_change < quiet_s:
            drain()
            if len(seen) != count:
                count, last_change = len(seen), time.monotonic()
            time.sleep(0.02)
    return seen
