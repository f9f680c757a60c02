"""Flow control of the Protocol-based data path, on real sockets in network namespaces.

A client that stops reading a large response must stall the whole chain back to the app:
the sidecars stop reading their upstream once their downstream write buffer is full (Envoy's
watermark buffers), so what is in flight sits in kernel socket buffers, not in the sidecars'
memory. When the client reads again, every byte arrives.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _pairlab import B_IP, pair_lab

from meshlab.envs.local.veth_pair import connect_in_netns
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab

BODY_BYTES = 96 * 1024 * 1024  # far more than all socket buffers on the path can hold
#: Growth of a sidecar's RSS allowed while the chain is stalled: a third of the body. With
#: flow control the growth measured 8–19 MB (write buffers up to their high-water mark, read
#: chunks in flight, allocator retention); without it sidecar A holds about 95 MB.
RSS_SLACK_MB = BODY_BYTES // 3 // (1024 * 1024)


@pytest.fixture(scope="module")
def lab():
    with pair_lab() as lab:
        yield lab


def _sidecar_rss_mb(ns: str) -> float:
    """VmRSS of the sidecar process running in ``ns``."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                          check=True).stdout.split()
    for pid in pids:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"meshlab.proxy" in cmd:
            status = Path(f"/proc/{pid}/status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) / 1024
    raise AssertionError(f"no sidecar process in {ns}")


def _app_send_queue(ns: str) -> int:
    """Bytes queued in the app's sending socket (port 8080) in ``ns``."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
                          "( sport = :8080 )"], capture_output=True, text=True, check=True)
    return sum(int(line.split()[1]) for line in out.stdout.splitlines() if line.strip())


def _recv_queue(ns: str, peer: str) -> int:
    """Unread bytes in the receive queues of ``ns``'s sockets connected to ``peer``."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
                          "dst", peer], capture_output=True, text=True, check=True)
    return sum(int(line.split()[0]) for line in out.stdout.splitlines() if line.strip())


def test_a_client_that_stops_reading_stalls_the_chain_not_the_sidecar_memory(lab):
    before = {ns: _sidecar_rss_mb(ns) for ns in (lab.ns_a, lab.ns_b)}
    with connect_in_netns(lab.ns_a, ("10.96.0.12", 8080), timeout_s=30) as s:
        s.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % BODY_BYTES)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        # sidecar A stops reading its upstream (its receive queue fills: a sidecar that kept
        # reading would hold it near 0) and the stall reaches the app (its send queue fills)
        wait_until(lambda: (_recv_queue(lab.ns_a, f"{B_IP}:8080"), _app_send_queue(lab.ns_b)),
                   lambda q: q[0] > 1 << 20 and q[1] > 0, timeout_s=30,
                   what="sidecar A not reading its upstream and the app blocked writing")
        stalled = {ns: _sidecar_rss_mb(ns) for ns in (lab.ns_a, lab.ns_b)}
        for ns, rss_mb in stalled.items():
            assert rss_mb - before[ns] < RSS_SLACK_MB, (ns, before[ns], rss_mb)
        received = len(head) - head.index(b"\r\n\r\n") - 4
        while received < BODY_BYTES:
            chunk = s.recv(1 << 20)
            assert chunk, f"connection closed after {received} of {BODY_BYTES} body bytes"
            received += len(chunk)
        assert received == BODY_BYTES
    entries = lab.wait_log("a", lambda ls: any(x["path"] == f"/big?size={BODY_BYTES}"
                                               for x in ls), timeout_s=10)
    entry = next(x for x in entries if x["path"] == f"/big?size={BODY_BYTES}")
    assert (entry["response_code"], entry["response_flags"]) == (200, "-")
    assert entry["bytes_sent"] == BODY_BYTES
