"""The sidecar's admin listener stays on the pod's loopback, as istio-proxy's does (Envoy admin
``127.0.0.1:15000``): inside the pod it answers, from another pod it does not — a connection
to ``<pod IP>:15000`` is captured by the inbound rules and finds no listener behind them — so
no other workload can read ``/config_dump`` or post ``/quitquitquit``. The Prometheus port
(15090) is meant to be scraped from outside and answers."""

from __future__ import annotations

import pytest

from meshlab.envs.local.netns_socket import netns_connect

pytestmark = pytest.mark.lab
CLIENT, L1 = "netshoot-0", "fortio-server-0"


@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab("adm") as env:
        yield env


def _get(netns: str, ip: str, port: int, path: str) -> bytes:
    """What ``GET path`` to ``ip:port`` from ``netns`` gets (b"" for a refused or reset
    connection)."""
    try:
        with netns_connect(netns, ip, port, 3.0) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         .encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data
    except (ConnectionError, TimeoutError):
        return b""


def test_admin_answers_only_on_the_pods_loopback(lab):
    assert '"configs"' in lab.sidecar_admin(L1, "/config_dump")  # from inside the pod
    client = lab.pod_shell(CLIENT).netns
    l1_ip = lab.pod(L1).ip
    reply = _get(client, l1_ip, 15000, "/config_dump")
    assert b'"configs"' not in reply and not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert _get(client, l1_ip, 15090, "/stats/prometheus").startswith(b"HTTP/1.1 200")
