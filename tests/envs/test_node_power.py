"""Node power-off / power-on in the local lab, for real (lab ``hpo``, overlay ``ha-l2``).

worknode7 runs only fortio-server-l2-1; netshoot (worknode5) holds plain TCP connections to it,
so the peer's view of a power loss is read from its own sockets: no FIN (the socket would go
CLOSE-WAIT), no RST (it would be gone, ``recv`` would fail), only retransmissions.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshlab.collectors.sockets import select, snapshot
from meshlab.envs.ledger import entries
from meshlab.envs.local.fingerprint import diff
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.netns import ETC_NETNS, NETNS_DIR
from meshlab.envs.local.netns_socket import netns_connect
from meshlab.envs.local.state import LabState
from meshlab.envs.manifest_sets import manifest_set
from meshlab.errors import ConfigError
from meshlab.faults.ledger import revert_leftovers
from meshlab.faults.node_poweroff import NodePowerOff
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hpo"
NODE = "worknode7"
VICTIM = "fortio-server-l2-1"
REQUEST = b"GET /echo?size=5 HTTP/1.1\r\nHost: l2\r\n\r\n"
MESHLAB = Path(sys.executable).with_name("meshlab")


def _poll(predicate, timeout_s: float, what: str):
    return wait_until(predicate, timeout_s=timeout_s, what=what)


@pytest.fixture
def lab(running_lab):
    with running_lab(LAB, manifests=manifest_set(None, ["ha-l2"])) as env:
        yield env


def _node_netns(env: LocalEnv) -> list[str]:
    return [env.plan.nodes[NODE].netns] + [pp.netns for pp in env.plan.pods_on(NODE)]


def _peer_socket(env: LocalEnv, sock: socket.socket):
    """netshoot's view of ``sock`` from ``ss``."""
    port = sock.getsockname()[1]
    found = select(snapshot(env.pod_shell("netshoot")), local_port=port)
    return found[0] if found else None


def test_power_off_leaves_nothing_of_the_node_and_peers_see_no_fin_or_rst(lab):
    ns = lab.plan.pods["netshoot-0"].netns
    ip = lab.pod(VICTIM).ip
    idle, busy = (netns_connect(ns, ip, 8080, 5.0) for _ in range(2))
    busy.sendall(REQUEST)
    assert busy.recv(4096).startswith(b"HTTP/1.1 200")
    before = LabState.load(LAB)
    old_pids = [pid for key, pid in before.pids.items() if key.startswith(VICTIM + "/")]
    assert len(old_pids) == 2  # sidecar + app

    out = lab.node_driver().power_off(NODE)
    assert NODE in out and not lab.node_driver().is_up(NODE)
    for name in _node_netns(lab):
        assert not (NETNS_DIR / name).exists() and not (ETC_NETNS / name).exists()
    assert all(not Path(f"/proc/{pid}").exists() or ") Z " in Path(f"/proc/{pid}/stat")
               .read_text() for pid in old_pids)
    state = LabState.load(LAB)
    assert state.powered_off == [NODE]
    assert not [k for k in state.pids if k.startswith(VICTIM + "/")]
    assert not set(_node_netns(lab)) & set(state.netns)
    assert "already" in lab.node_driver().power_off(NODE)

    busy.sendall(REQUEST)  # into the void: retransmitted, never answered
    info = _poll(lambda: (s := _peer_socket(lab, busy)) and s.retrans_total >= 2 and s,
                 10, "retransmissions toward the dead pod")
    assert info.state == "ESTAB" and info.timer == "on" and info.unacked >= 1
    assert _peer_socket(lab, idle).state == "ESTAB"  # no FIN came (else CLOSE-WAIT)
    for sock in (idle, busy):
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # neither EOF nor ECONNRESET
            sock.recv(1)
    lab.node_driver().power_on(NODE)
    with pytest.raises(ConnectionResetError):  # the rebuilt pod answers the old flow with RST
        busy.setblocking(True)
        busy.settimeout(10)
        busy.recv(1)
    idle.close()
    busy.close()


def test_power_on_restores_the_fingerprint_and_traffic(lab):
    before = lab.fingerprint()
    driver = lab.node_driver()
    driver.power_off(NODE)
    off = lab.fingerprint()
    assert set(_node_netns(lab)).isdisjoint(off["netns"])
    out = driver.power_on(NODE)
    assert "rebuilt" in out and driver.is_up(NODE)
    assert diff(before, lab.fingerprint()) == []
    assert LabState.load(LAB).powered_off == []
    assert driver.power_on(NODE) == f"{NODE}: already on"
    res = lab.pod_shell("netshoot").run(
        ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
         f"http://{lab.pod(VICTIM).ip}:8080/echo"])
    assert res.stdout == "200" and res.duration_s < 2.0  # peers learnt the new MAC at once


def test_unknown_node_and_bad_fault_parameters_are_config_errors(lab):
    with pytest.raises(ConfigError, match="worknode9"):
        lab.node_driver().power_off("worknode9")
    with pytest.raises(ConfigError, match="duration_s"):
        NodePowerOff(node=NODE, duration_s=0)
    with pytest.raises(ConfigError, match="node"):
        NodePowerOff(node="")


def test_meshlab_down_with_a_node_off_leaves_nothing(lab, lab_leftovers):
    lab.node_driver().power_off(NODE)
    res = subprocess.run([str(MESHLAB), "down", "--lab", LAB], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert lab_leftovers(LAB) == {}
    assert not LabState.dir_for(LAB).exists()


_INJECT = """
import sys, time
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.manifest_sets import manifest_set
from meshlab.faults.base import start
from meshlab.faults.node_poweroff import NodePowerOff
from meshlab.polling import wait_until
env = LocalEnv(manifest_set(None, ["ha-l2"]), lab=sys.argv[1])
start(NodePowerOff(node=sys.argv[2], duration_s=float(sys.argv[3])), env)
print("injected", flush=True)
time.sleep(120)
"""


def _inject_in_child(duration_s: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _INJECT, LAB, NODE, str(duration_s)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "injected"
    return child


def test_deadman_powers_the_node_on_after_the_runner_is_killed(lab):
    before = lab.fingerprint()
    child = _inject_in_child(duration_s=4.0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not lab.node_driver().is_up(NODE)
    _poll(lambda: lab.node_driver().is_up(NODE), 30, "deadman power-on")
    (entry,) = entries("local", LAB)
    # the deadman writes reverted_by just after the node answers again: poll the record
    _poll(lambda: entry.read()["reverted_by"] == "deadman", 10, "ledger reverted_by")
    after = lab.fingerprint()
    assert after["faults"] == [entry.path.stem]  # reverted, left for `meshlab down` to close
    assert diff(before, {**after, "faults": []}) == []
    assert [line.split(":")[0] for line in revert_leftovers("local", LAB, env=lab)] == ["node-poweroff"]
    assert diff(before, lab.fingerprint()) == []


def test_kill_9_of_runner_and_deadman_then_down_leaves_nothing(lab, lab_leftovers):
    child = _inject_in_child(duration_s=60.0)
    (entry,) = entries("local", LAB)
    for pid in (child.pid, entry.read()["deadman_pid"]):
        os.kill(pid, signal.SIGKILL)
    child.wait()
    assert not lab.node_driver().is_up(NODE)
    res = subprocess.run([str(MESHLAB), "down", "--lab", LAB], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0 and "node-poweroff" in res.stdout, res.stdout + res.stderr
    assert lab_leftovers(LAB) == {}
