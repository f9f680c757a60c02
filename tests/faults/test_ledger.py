"""The always-rollback contract on a real lab: the ledger, the deadman, signals and ``kill -9``.

A fault is reverted exactly once — by the runner when its block ends (also on SIGTERM/Ctrl-C),
by its deadman when ``max_duration_s`` passes even if the runner is gone, or by
``meshlab down`` after the runner *and* its deadman were killed — and nothing is left behind.
The fault used is ``reject-connections`` (one iptables rule in L2's netns), so "active" is a
plain ``iptables -C``.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from meshlab.envs.ledger import entries
from meshlab.faults.base import active, start, stop
from meshlab.faults.reject_connections import RejectConnections
from meshlab.journal import RunJournal
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "led"
FAULT = RejectConnections(target="fortio-server-l2", port=8080)
MESHLAB = os.path.join(os.path.dirname(sys.executable), "meshlab")


def poll(cond, timeout_s=10.0):
    """Wait until ``cond()`` is truthy (:func:`meshlab.polling.wait_until`)."""
    return wait_until(cond, timeout_s=timeout_s)


def rule_active(env) -> bool:
    return env.pod_shell(FAULT.target).run(["iptables", "-C", *FAULT._rule()], check=False).ok


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = f"/proc/{pid}/stat"
    return os.path.exists(stat) and ") Z " not in open(stat).read()


@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab(LAB) as env:
        yield env
    assert entries("local", LAB) == []


RUNNER = textwrap.dedent("""
    import sys, time
    from meshlab.envs.local.lab import LocalEnv
    from meshlab.faults.base import active
    from meshlab.faults.reject_connections import RejectConnections
    from meshlab.pytest_plugin import _sigterm
    import signal
    signal.signal(signal.SIGTERM, _sigterm)   # as the pytest plugin does
    env = LocalEnv(lab=sys.argv[1])
    with active(RejectConnections(target="fortio-server-l2", port=8080), env,
                max_duration_s=float(sys.argv[2])):
        print("active", flush=True)
        time.sleep(600)
""")


def start_runner(max_duration_s: float) -> subprocess.Popen:
    """A separate process that injects the fault and then hangs inside the block."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, LAB, str(max_duration_s)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "active"
    return proc


def test_block_end_reverts_and_journals(lab, tmp_path):
    journal = RunJournal(tmp_path, "ledger")
    with active(FAULT, lab, journal):
        assert rule_active(lab)
        (entry,) = entries("local", LAB)
        data = entry.read()
        assert data["status"] == "active" and data["params"] == {"target": "fortio-server-l2",
                                                                 "port": 8080}
        assert alive(data["deadman_pid"])
    assert not rule_active(lab) and entries("local", LAB) == []
    assert not alive(data["deadman_pid"])
    acts = journal.data["activities"]
    assert [a["name"] for a in acts] == ["inject:reject-connections",
                                         "revert:reject-connections"]
    assert all(a["status"] == "succeeded" and a["duration_s"] is not None for a in acts)
    assert len(journal.data["fault_windows"]) == 1


def test_exception_in_block_still_reverts(lab):
    with pytest.raises(ZeroDivisionError), active(FAULT, lab):
        assert rule_active(lab)
        1 / 0  # noqa: B018
    assert not rule_active(lab) and entries("local", LAB) == []


def test_deadman_reverts_when_the_block_outlives_max_duration(lab, tmp_path):
    journal = RunJournal(tmp_path, "deadman")
    with active(FAULT, lab, journal, max_duration_s=0.5):
        assert rule_active(lab)
        poll(lambda: not rule_active(lab))
    assert entries("local", LAB) == []
    revert = journal.data["activities"][-1]
    assert revert["output"].startswith("already reverted by deadman")
    assert any("deadman" in n for n in journal.data["notes"])


def test_split_start_stop_is_idempotent(lab):
    entry, out = start(FAULT, lab)
    assert "gets RST" in out and rule_active(lab)
    text, last = stop(FAULT, lab, entry)
    assert text.endswith("removed 1 rule(s)")
    assert last["reverted_by"] == "runner" and not rule_active(lab)
    assert FAULT.revert(lab).endswith("removed 0 rule(s)")  # reverting again is a no-op


def test_sigterm_to_the_runner_reverts_at_once(lab):
    proc = start_runner(max_duration_s=120)
    assert rule_active(lab)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert not rule_active(lab) and entries("local", LAB) == []


def test_kill_9_runner_then_deadman_reverts(lab):
    proc = start_runner(max_duration_s=1.0)
    proc.kill()
    proc.wait()
    assert rule_active(lab)  # the runner died with the fault active …
    poll(lambda: not rule_active(lab))  # … and its deadman reverted it
    (entry,) = entries("local", LAB)  # the record stays for `meshlab down` to clear
    poll(lambda: entry.read()["reverted_by"] == "deadman")  # written just after the revert
    res = subprocess.run([MESHLAB, "down", "--lab", LAB], capture_output=True, text=True,
                         check=True)
    assert "already reverted by deadman" in res.stdout
    lab.up()


def test_kill_9_runner_and_deadman_then_meshlab_down_leaves_nothing(lab, lab_leftovers):
    proc = start_runner(max_duration_s=120)
    (entry,) = entries("local", LAB)
    deadman = entry.read()["deadman_pid"]
    for pid in (proc.pid, deadman):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    poll(lambda: not alive(deadman))
    assert rule_active(lab)
    res = subprocess.run([MESHLAB, "down", "--lab", LAB], capture_output=True, text=True,
                         check=True)
    assert "reverted leftover fault reject-connections" in res.stdout
    assert entries("local", LAB) == [] and lab_leftovers(LAB) == {}
    status = json.loads(subprocess.run([MESHLAB, "status", "--lab", LAB], capture_output=True,
                                       text=True, check=True).stdout)
    assert status["netns"] == [] and status["status"] == "down"
    lab.up()
