"""``bandwidth`` on a real lab: the measured rate is within ±10 % of ``rate_mbit`` at 1, 10 and
100 Mbit/s (egress, and ingress through the IFB), the revert leaves the devices as they were,
and a second shaping of one device or a bad parameter changes nothing.

Throughput is measured with UDP (not captured by the Istio rules: it goes straight from
netshoot's socket to L2's): datagrams offered at 1.5 × the rate for 3 s, the received frame
bytes (payload + 42 bytes of Ethernet/IP/UDP headers, what ``tbf`` counts) over the last 2 s,
after the bucket's initial burst has drained. ``lab`` and ``unchanged`` are in ``conftest.py``.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from meshlab.envs.local.netns_socket import netns_socket
from meshlab.errors import ConfigError, LabError
from meshlab.faults.bandwidth import Bandwidth
from meshlab.faults.base import active

pytestmark = pytest.mark.lab
LAB = "hbw"
CLIENT, L1, L2 = "netshoot-0", "fortio-server-0", "fortio-server-l2-0"
PAYLOAD = 1400
HEADERS = 42  # Ethernet 14 + IPv4 20 + UDP 8
UDP_PORT = 9998
OFFERED = 1.5


@pytest.fixture
def devices_unchanged(lab, unchanged):
    """Also fails the test if a pod's qdiscs or links differ afterwards."""
    before = {pod: _devices(lab, pod) for pod in (CLIENT, L1, L2)}
    yield
    assert {pod: _devices(lab, pod) for pod in (CLIENT, L1, L2)} == before


def _devices(lab, pod: str) -> str:
    shell = lab.pod_shell(pod)
    return shell.run(["tc", "qdisc", "show"]).stdout + shell.run(["ip", "-o", "link"]).stdout


def udp_mbit(lab, offered_mbit: float, duration_s: float = 3.0, skip_s: float = 1.0,
             to: str = L2) -> float:
    """Frame Mbit/s received by pod ``to`` from netshoot over ``duration_s - skip_s``
    seconds."""
    rx = netns_socket(lab.pod_shell(to).netns, socket.AF_INET, socket.SOCK_DGRAM)
    tx = netns_socket(lab.pod_shell(CLIENT).netns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((lab.pod(to).ip, UDP_PORT))
    rx.settimeout(0.2)
    arrivals: list[float] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                rx.recv(2048)
            except TimeoutError:
                continue
            arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    per_ms = offered_mbit * 1e6 / 8 / (PAYLOAD + HEADERS) / 1000
    data, dest, sent = b"x" * PAYLOAD, (lab.pod(to).ip, UDP_PORT), 0
    start = time.monotonic()
    with rx, tx:
        while (elapsed_ms := (time.monotonic() - start) * 1000) < duration_s * 1000:
            while sent < per_ms * elapsed_ms:  # paced: the offered rate, not a flood
                try:
                    tx.sendto(data, dest)
                except OSError:  # a full qdisc queue: the datagram is dropped here
                    pass
                sent += 1
            time.sleep(0.001)
        stop.set()
        receiver.join(timeout=2)
    window = [t for t in arrivals if skip_s <= t - start < duration_s]
    return len(window) * (PAYLOAD + HEADERS) * 8 / (duration_s - skip_s) / 1e6


@pytest.mark.parametrize("rate_mbit", [1, 10, 100])
def test_egress_rate_is_within_ten_percent(lab, devices_unchanged, rate_mbit):
    with active(Bandwidth(target=CLIENT, rate_mbit=rate_mbit), lab):
        measured = udp_mbit(lab, OFFERED * rate_mbit)
    print(f"\negress {rate_mbit} Mbit/s: measured {measured:.2f}")
    assert abs(measured - rate_mbit) <= 0.1 * rate_mbit, measured


def test_ingress_rate_through_the_ifb(lab, devices_unchanged):
    fault = Bandwidth(target=L2, rate_mbit=10, direction="ingress")
    with active(fault, lab):
        links = lab.pod_shell(L2).run(["ip", "-o", "link"]).stdout
        assert fault.ifb in links
        measured = udp_mbit(lab, OFFERED * 10)
    print(f"\ningress 10 Mbit/s: measured {measured:.2f}")
    assert abs(measured - 10) <= 1.0, measured
    assert udp_mbit(lab, 40) > 20  # reverted: no longer shaped


def test_a_peer_filter_limits_only_the_traffic_with_that_peer(lab, devices_unchanged):
    """``peer_pod``: netshoot → L2 is limited, netshoot → L1 is not (htb + u32 filter)."""
    fault = Bandwidth(target=CLIENT, rate_mbit=5, peer_pod=L2)
    with active(fault, lab):
        assert f"htb {fault.handle}" in lab.pod_shell(CLIENT).run(
            ["tc", "qdisc", "show", "dev", "eth0"]).stdout
        to_peer = udp_mbit(lab, OFFERED * 5)
        to_other = udp_mbit(lab, 40, to=L1)
    print(f"\npeer-filtered 5 Mbit/s: to L2 {to_peer:.2f}, to L1 {to_other:.2f}")
    assert abs(to_peer - 5) <= 0.5, to_peer
    assert to_other > 30, to_other
    with pytest.raises(ConfigError, match="bandwidth: peer_pod: .*nope"):
        Bandwidth(target=CLIENT, rate_mbit=5, peer_pod="nope").inject(lab)
    with pytest.raises(ConfigError, match="bandwidth: peer_cidr: not an IPv4 network"):
        Bandwidth(target=CLIENT, rate_mbit=5, peer_cidr="10.0.0.300/8")


def test_a_shaped_device_is_not_shaped_twice_and_bad_input_is_named(lab, devices_unchanged):
    with (active(Bandwidth(target=CLIENT, rate_mbit=5), lab),
          pytest.raises(LabError, match="already has root qdisc")):
        Bandwidth(target=CLIENT, rate_mbit=50, shape_id="abc").inject(lab)
    with pytest.raises(ConfigError, match="bandwidth: rate_mbit: must be a positive number"):
        Bandwidth(target=CLIENT, rate_mbit=0)
    with pytest.raises(ConfigError, match="bandwidth: direction: must be one of"):
        Bandwidth(target=CLIENT, rate_mbit=1, direction="up")
    with pytest.raises(ConfigError, match="bandwidth: target: 'nope' is neither"):
        Bandwidth(target="nope", rate_mbit=1).inject(lab)
