"""``meshlab doctor`` on this machine (every required check passes; the throwaway namespace is
gone afterwards) and ``meshlab up``'s one-line refusal when bridge netfilter is missing (a
stock Debian kernel before ``modprobe br_netfilter``), with nothing built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshlab.envs.local import doctor
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.netns import list_netns
from meshlab.envs.local.state import LabState
from meshlab.errors import LabError

pytestmark = pytest.mark.lab


def test_doctor_finds_everything_the_lab_needs_here(host_snapshot):
    res = subprocess.run([sys.executable, "-m", "meshlab", "doctor", "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    findings = {f["name"]: f for f in json.loads(res.stdout)}
    required = [f for f in findings.values() if f["required"]]
    assert required and all(f["ok"] for f in required), required
    for name in ("bridge netfilter (br_netfilter)",
                 "iptables statistic match (packet-drop, kube-proxy)",
                 "conntrack (kube-proxy NAT, conntrack faults)",
                 "NFQUEUE target (network-delay's userspace netem)", "tbf qdisc (bandwidth)",
                 "netem qdisc (network-delay in the kernel)", "cgroup cpu/memory controllers"):
        assert name in findings
    netem = findings["netem qdisc (network-delay in the kernel)"]
    assert netem["ok"] or "NFQUEUE agent" in netem["fix"]  # this kernel has no sch_netem
    assert not [n for n in list_netns() if n.startswith("ml-doctor-")]


def test_missing_bridge_netfilter_is_one_line_with_the_fix(tmp_path: Path):
    assert doctor.bridge_netfilter_error(tmp_path) is None  # exists
    reason = doctor.bridge_netfilter_error(tmp_path / "bridge-nf-call-iptables")
    assert reason is not None and "\n" not in reason
    assert "modprobe br_netfilter" in reason


def test_up_refuses_before_building_anything_without_bridge_netfilter(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "BRIDGE_NF_SYSCTL", tmp_path / "bridge-nf-call-iptables")
    env = LocalEnv(lab="dct")
    with pytest.raises(LabError, match="bridge netfilter is missing .* modprobe br_netfilter"):
        env.up()
    assert not [n for n in list_netns() if n.startswith("ml-dct-")]
    assert LabState.load("dct") is None
