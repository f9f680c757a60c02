"""``meshlab fault`` on a real lab: inject prints an id and returns while the fault stays
active, status shows it, revert removes it; an expired ``--duration-s`` and a ``kill -9``'d
inject both end with the fault reverted by its deadman; bad input exits 2 naming the parameter
and changes nothing. ``lab`` and ``unchanged`` (which also wants an empty ledger) are in
``conftest.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from meshlab.envs.ledger import entries
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hfc"
MESHLAB = os.path.join(os.path.dirname(sys.executable), "meshlab")
PARTITION = ["network-partition", "--side-a", "netshoot-0", "--side-b", "fortio-server-l2-0"]
DELAY = ["network-delay", "--target", "fortio-server-l2-0", "--delay-ms", "20ms",
         "--direction", "ingress"]


def fault(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHLAB, "fault", *args, "--lab", LAB], capture_output=True,
                          text=True, check=check, timeout=60)


def status() -> list[dict]:
    return json.loads(fault("status", "--json").stdout)


def partitioned(lab) -> bool:
    """Whether any fault's trace is in L2's netns: a meshlab rule or a netem agent."""
    shell = lab.pod_shell("fortio-server-l2-0")
    rules = shell.run(["iptables", "-S", "INPUT"]).stdout
    agents = shell.run(["pgrep", "-f", "meshlab.faults.netem_agent"], check=False).stdout
    return "meshlab:network-" in rules or bool(agents.strip())


def test_inject_status_revert(lab, unchanged):
    start = time.monotonic()
    fault_id = fault("inject", *PARTITION, "--duration-s", "120").stdout.strip()
    assert time.monotonic() - start < 10 and "-network-partition-" in fault_id
    assert partitioned(lab)  # still active: the command has returned
    (row,) = status()
    assert (row["id"], row["fault"], row["status"]) == (fault_id, "network-partition", "active")
    assert 100 < row["remaining_s"] <= 120 and row["params"]["side_a"] == ["netshoot-0"]
    table = fault("status").stdout
    assert fault_id in table and "network-partition" in table
    out = fault("revert", fault_id).stdout
    assert out.startswith(f"{fault_id}: ") and "removed" in out
    assert not partitioned(lab) and status() == []


@pytest.mark.parametrize("kind", [PARTITION, DELAY], ids=["partition", "delay"])
def test_expired_duration_is_reverted_by_the_deadman(lab, unchanged, kind):
    fault_id = fault("inject", *kind, "--duration-s", "1").stdout.strip()
    wait_until(status, lambda rows: rows and rows[0]["reverted_by"] == "deadman",
               timeout_s=15, what="the deadman's revert in the ledger")
    assert not partitioned(lab)
    assert fault("revert", "--all").stdout.startswith(f"{fault_id}: already reverted by deadman")


@pytest.mark.parametrize("kind", [PARTITION, DELAY], ids=["partition", "delay"])
def test_a_killed_inject_is_reverted_by_its_deadman(lab, unchanged, kind):
    proc = subprocess.Popen([MESHLAB, "fault", "inject", *kind, "--duration-s", "2",
                             "--lab", LAB], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: [e for e in entries("local", LAB) if (e.read() or {}).get("deadman_pid")],
               timeout_s=20, what="the ledger entry and its deadman")
    os.kill(proc.pid, signal.SIGKILL)  # at some point of its inject (or just after it)
    proc.wait()
    wait_until(lambda: (status() or [{}])[0].get("reverted_by") == "deadman", timeout_s=20,
               what="the deadman's revert in the ledger")
    assert not partitioned(lab)
    fault("revert", "--all")


@pytest.mark.parametrize(("args", "message"), [
    (["inject", "no-such-fault"], "unknown fault 'no-such-fault'"),
    (["inject", *PARTITION, "--colour", "red"], "--colour: not a parameter of fault"),
    (["inject", "bandwidth", "--target", "netshoot-0", "--rate-mbit", "5ms"],
     "--rate-mbit: takes Mbit/s, got '5ms'"),
    (["inject", "bandwidth", "--target", "nope-0", "--rate-mbit", "5"],
     "bandwidth: target: 'nope-0' is neither a pod nor a node"),
    (["inject", "network-partition", "--side-a", "netshoot-0"], "--side-b: required"),
    (["revert", "123456-nothing-abc"], "fault id '123456-nothing-abc': no such fault"),
])
def test_bad_input_exits_2_naming_the_parameter(lab, unchanged, args, message):
    res = fault(*args, check=False)
    assert res.returncode == 2, res
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_a_lab_that_is_not_up_exits_2(lab):
    res = subprocess.run([MESHLAB, "fault", "inject", *PARTITION, "--lab", "nolab"],
                         capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 2 and "lab 'nolab' is not up" in res.stderr
