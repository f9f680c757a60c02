"""Istio config placed in the manifests folder reaches the local lab's sidecars: the layered lab
plus ``manifests/examples/istio`` (DestinationRule, VirtualService, EnvoyFilter)."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from meshlab.collectors.accesslog import parse_lines
from meshlab.envs.local.lab import DEFAULT_MANIFESTS, LocalEnv
from meshlab.experiment.labs import lab_down, lab_up
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "poltest"
EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "istio"
L2 = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, lab_leftovers):
    folder = tmp_path_factory.mktemp("manifests") / "m"
    shutil.copytree(DEFAULT_MANIFESTS, folder)
    for f in EXAMPLES.glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    env = LocalEnv(folder, lab=LAB)  # loading validates the Istio documents too
    lab_up(env)
    yield env  # pytest runs the rest even when a test failed
    lab_down(env)
    assert lab_leftovers(LAB) == {}


def test_sidecar_config_carries_the_policies(lab):
    cfg = json.loads((lab.pod_log_dir("fortio-server-0") / "sidecar.json").read_text())
    pol = cfg["policies"]
    assert pol["clusters"][L2]["tcp_keepalive"] == {"probes": 3, "time_s": 10, "interval_s": 5}
    assert pol["routes"][L2]["timeout_s"] == 6.0
    assert pol["listeners"]["15006"]["socket_options"][0]["name"] == 18


def test_keepalive_and_breakers_apply_to_the_l2_hop(lab):
    """netshoot → fortio-server:8070 → (sidecar, DR policy) → L2: the pooled upstream socket to
    L2 has a keepalive timer and the cluster shows the DR's circuit-breaker thresholds."""
    res = lab.pod_shell("netshoot").run(
        ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
         "http://fortio-server:8070/echo"])
    assert res.stdout == "200"
    l2_ip = next(p.ip for p in lab.pods() if p.name == "fortio-server-l2-0")
    deadline = time.monotonic() + 5
    out = ""
    while time.monotonic() < deadline:  # the connection is pooled right after the response
        out = lab.pod_shell("fortio-server-0").run(
            ["ss", "-tnio", "state", "established", "dst", f"{l2_ip}:8080"]).stdout
        if "keepalive" in out:
            break
        time.sleep(0.05)
    assert re.search(r"timer:\(keepalive,[0-9.]+(ms|sec|min)", out), out
    stats = lab.sidecar_admin("fortio-server-0", "/stats")
    p = re.escape(f"cluster.{L2};.circuit_breakers.default.")
    assert re.search(p + r"remaining_pending: 64\b", stats)
    assert re.search(p + r"remaining_retries: 3\b", stats)
    assert re.search(p + r"remaining_rq: 4294967295\b", stats)


def test_buffer_filter_caps_request_bodies_on_the_l2_inbound_port(lab):
    """The example buffer-filter EnvoyFilter (1 MiB on fortio-server-l2's inbound 8080), through
    kube-proxy NAT and the L2 sidecar's capture: 1 MiB is echoed, 1 MiB + 1 gets 413, and only
    L2's inbound HCM counts it."""
    limit = 1 << 20
    url = "http://fortio-server-l2:8080/echo"

    def post(size: int) -> str:
        return lab.pod_shell("netshoot").run(
            ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             "-H", "Expect:", "--data-binary", "@-", url], input_text="x" * size).stdout

    assert post(limit) == f"200 {limit}"
    assert post(limit + 1) == "413 17"  # "Payload Too Large"
    wait_until(lambda: lab.sidecar_admin("fortio-server-l2-0", "/stats"),
               lambda text: re.search(r"^http\.inbound_0\.0\.0\.0_8080;\."
                                      r"downstream_rq_too_large: 1$", text, re.MULTILINE),
               timeout_s=5, what="downstream_rq_too_large 1 on L2's inbound 8080 HCM")
    [rec] = wait_until(lambda: [r for r in parse_lines(lab.access_log_lines("fortio-server-l2-0"))
                                if r["response_code"] == 413],
                       timeout_s=5, what="the 413 in L2's access log")
    assert (rec["response_flags"], rec["response_code_details"]) == \
        ("-", "request_payload_too_large")
