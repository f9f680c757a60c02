"""The lab's Prometheus never outlives its lab (lab ``prom``): ``stop_prometheus`` and ``down``
stop it, and after a runner was ``kill -9``'d with the server running, ``meshlab down`` or the
next ``up`` removes it (its PID is in the lab state and it lives in the lab's cluster netns)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshlab.envs.local import prometheus as server
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.state import LabState

pytestmark = pytest.mark.lab
LAB = "prom"
MESHLAB = Path(sys.executable).with_name("meshlab")
RUNNER = f"""
import sys
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.state import LabState
env = LocalEnv(lab={LAB!r})
env.up()
env.start_prometheus()
print(LabState.load({LAB!r}).pids["prometheus"], flush=True)
sys.stdin.read()  # until killed
"""


def test_stop_and_down_stop_the_server(lab_leftovers):
    env = LocalEnv(lab=LAB)
    env.up()
    try:
        env.start_prometheus()
        pid = LabState.load(LAB).pids[server.PID_KEY]
        assert server.running_pid(LAB) == pid
        assert env.stop_prometheus() is True
        assert not server.is_server(pid, LAB) and server.running_pid(LAB) is None
        assert server.PID_KEY not in LabState.load(LAB).pids
        assert not server.server_dir(LAB).exists()
        assert env.stop_prometheus() is False  # idempotent
        env.start_prometheus()  # again, then down stops it
        pid = LabState.load(LAB).pids[server.PID_KEY]
    finally:
        env.down()
    assert not server.is_server(pid, LAB)
    assert lab_leftovers(LAB) == {}


@pytest.mark.parametrize("cleaner", ["meshlab down", "next up"])
def test_server_of_a_killed_runner_is_removed(cleaner, lab_leftovers):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = runner.stdout.readline()
        assert line.strip().isdigit(), f"runner failed (exit {runner.poll()})"
        pid = int(line)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        assert server.is_server(pid, LAB)  # orphaned, still scraping
        if cleaner == "meshlab down":
            subprocess.run([str(MESHLAB), "down", "--lab", LAB], check=True, timeout=120,
                           capture_output=True)
        else:
            env = LocalEnv(lab=LAB)
            env.up()
            assert not server.is_server(pid, LAB) and server.running_pid(LAB) is None
            env.down()
        assert not server.is_server(pid, LAB)
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.wait(timeout=10)
        subprocess.run([str(MESHLAB), "down", "--lab", LAB], check=False, timeout=120,
                       capture_output=True)
    assert lab_leftovers(LAB) == {}
