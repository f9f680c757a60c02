"""Istio config placed in the manifests folder reaches the local lab's sidecars: the layered lab
plus ``manifests/examples/istio`` (DestinationRule, VirtualService, EnvoyFilter)."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from meshlab.envs.local.lab import DEFAULT_MANIFESTS, LocalEnv
from meshlab.experiment.labs import lab_down, lab_up

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
