"""Kill -9 at random points: SIGKILL a run's runner in a chosen phase, then prove ``meshlab down``
leaves nothing behind.

One :func:`trial`: ``meshlab run kill9_scenario.py --lab <lab>`` starts (its own reports folder);
the harness polls the run's files until the chosen phase begins, waits a random delay inside the
phase's window, and SIGKILLs the runner process alone (what it started — load runners, fault
deadmen, the lab's pods and kubelet loop — lives on, as after a real ``kill -9``). It then runs
``meshlab down --lab <lab>`` and lists what is left, against a snapshot of the host taken before
the trial:

- what every lab test checks after ``down`` (``tests/lab_scan.py``): the lab's network
  namespaces and ``/etc/netns`` folders, its state folder, cgroups (``meshlab/<lab>`` under any
  parent, v1 or v2) and fault ledger entries (any entry left is a fault still marked active);
- processes started since the snapshot that belong to the lab: inside one of its namespaces
  (pods, sidecars, load runners, dnsmasq, Prometheus) or naming its state, ledger or netns in
  their arguments (fault deadmen, the kubelet loop);
- the host's own network namespace: its iptables rules, qdiscs, links and sysctls must be as
  they were (the lab never touches them; a kill must not make it).

Phases and their triggers (what the harness polls; the window is the random delay after it):

=================  =====================================================  =============
phase              trigger                                                window (s)
=================  =====================================================  =============
up                 the lab's state file exists (``LocalEnv.up`` began)   0 – 1
collector start    the run's ``results.json`` exists (journal opened)     0 – 0.05
load start         activity ``load:warm-up`` is recorded                  0 – 0.5
fault inject       activity ``inject:packet-drop`` is recorded            0 – 0.2
fault revert       activity ``revert:`` of any fault is recorded           0 – 0.3
report writing     the journal's status is final (``render_report`` next)  0 – 0.3
=================  =====================================================  =============

Each record says where the kill landed, read from the files at the moment of the kill (the lab
state's status, the last activity, whether ``report.html`` existed). The windows follow the
phases' lengths measured in the first 20-trial run (``benchmarks/results/kill9-*.json``): the
lab's netns build takes under 0.8 s, the collectors start within 0.07 s of the journal, the three
injections within 0.5 s.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab_scan import lab_leftovers, leftover_lines

from meshlab.envs.local.plan import lab_prefix
from meshlab.envs.local.state import LabState
from meshlab.polling import wait_until

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "kill9_scenario.py"
MESHLAB = [sys.executable, "-m", "meshlab"]
PHASES: dict[str, float] = {"up": 1.0, "collector start": 0.05, "load start": 0.5,
                            "fault inject": 0.2, "fault revert": 0.3, "report writing": 0.3}
_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables",
            "net/netfilter/nf_conntrack_tcp_timeout_established",
            "net/netfilter/nf_conntrack_tcp_be_liberal", "net/ipv4/ip_local_port_range")


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


def lab_netns_inodes(lab: str) -> set[int]:
    """The inode numbers of ``lab``'s network namespaces now (a process inside one of them
    belongs to the lab, whatever its command line)."""
    out = set()
    for path in Path("/run/netns").glob(f"{lab_prefix(lab)}*"):
        try:
            out.add(path.stat().st_ino)
        except OSError:
            continue
    return out


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _lab_process(pid: int, lab: str, inodes: set[int]) -> str | None:
    """``pid``'s command line when it belongs to ``lab`` (in one of its namespaces, or naming
    its state, ledger or netns in its arguments), else None."""
    cmd = _cmdline(pid)
    marks = (f"/run/meshlab/{lab}/", f"/faults/local-{lab}", lab_prefix(lab), f"--lab {lab} ",
             f"meshlab/{lab}")
    if _netns_inode(pid) in inodes or any(m in cmd + " " for m in marks):
        return cmd or "?"
    return None


def host_snapshot() -> dict[str, Any]:
    """The host netns's rules, qdiscs, links and sysctls, and the PIDs alive now."""
    sysctls = {}
    for key in _SYSCTLS:
        try:
            sysctls[key] = (Path("/proc/sys") / key).read_text().strip()
        except OSError:
            sysctls[key] = None
    return {"iptables": _out(["iptables-save"]), "qdiscs": _out(["tc", "qdisc", "show"]),
            "links": sorted(ln.split(":")[1].strip().split("@")[0] for ln in
                            _out(["ip", "-o", "link", "show"]).splitlines() if ":" in ln),
            "sysctls": sysctls, "pids": _pids()}


def _strip_iptables(text: str) -> list[str]:
    """``iptables-save`` without its comments and chain counters (they move with traffic)."""
    return [ln.split(" [")[0] if ln.startswith(":") else ln for ln in text.splitlines()
            if not ln.startswith("#")]


def leftovers(lab: str, before: dict[str, Any], inodes: set[int]) -> list[str]:
    """Everything of ``lab`` still there, and every change to the host netns since ``before``
    (:func:`host_snapshot`): one line each; empty when clean. ``inodes``: the lab's netns
    inodes while it ran (:func:`lab_netns_inodes`)."""
    found = lab_leftovers(lab)
    left = leftover_lines(found)
    listed = {int(line.split()[0]) for line in found.get("procs", [])}
    for pid in sorted(_pids() - before["pids"]):
        cmd = _lab_process(pid, lab, inodes)
        if cmd is not None and pid != os.getpid() and pid not in listed:
            left.append(f"process {pid}: {cmd[:120]}")
    now = host_snapshot()
    if _strip_iptables(now["iptables"]) != _strip_iptables(before["iptables"]):
        left.append("host iptables rules changed")
    for key in ("qdiscs", "links", "sysctls"):
        if now[key] != before[key]:
            left.append(f"host {key} changed: {before[key]!r} -> {now[key]!r}"[:300])
    return left


def _journal(reports: Path) -> dict[str, Any] | None:
    for path in reports.glob("*/results.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # being written: not there yet
    return None


def _activity(reports: Path, prefix: str) -> bool:
    data = _journal(reports) or {}
    return any(a.get("name", "").startswith(prefix) for a in data.get("activities", []))


def _triggered(phase: str, lab: str, reports: Path) -> bool:
    if phase == "up":
        return (LabState.dir_for(lab) / "state.json").exists()
    if phase == "collector start":
        return any(reports.glob("*/results.json"))
    if phase == "load start":
        return _activity(reports, "load:warm-up")
    if phase == "fault inject":
        return _activity(reports, "inject:packet-drop")
    if phase == "fault revert":
        return _activity(reports, "revert:")
    data = _journal(reports) or {}
    return data.get("status") not in (None, "running")


def landed(lab: str, reports: Path) -> dict[str, Any]:
    """Where the run was when it died: the lab state's status, the last activity recorded (and
    whether it was still running), whether the collectors had written a series, whether the
    report existed."""
    state = LabState.load(lab)
    data = _journal(reports) or {}
    last = (data.get("activities") or [{}])[-1]
    return {"lab": state.status if state else None,
            "activity": f"{last.get('name')} ({last.get('status')})" if last else None,
            "journal": data.get("status"),
            "series": any(reports.glob("*/series/*.jsonl")),
            "report": any(reports.glob("*/report.html"))}


def trial(phase: str, lab: str, rng: random.Random, timeout_s: float = 120.0,
          run_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """One kill -9 trial in ``phase`` (a key of :data:`PHASES`) on lab ``lab``; ``run_args``
    are passed on to ``meshlab run`` (e.g. ``--meshlab-prometheus=off``).

    Returns:
        ``{"phase", "delay_s", "killed", "landed", "down_s", "down_output", "leftovers"}``;
        ``killed`` False means the run ended before the kill (its exit code in ``rc``).

    Raises:
        TimeoutError: the phase never began within ``timeout_s``.
    """
    before = host_snapshot()
    delay_s = round(rng.uniform(0.0, PHASES[phase]), 3)
    with tempfile.TemporaryDirectory(prefix="mlkill9-") as tmp:
        reports = Path(tmp)
        runner = subprocess.Popen(
            [*MESHLAB, "run", str(SCENARIO), "--lab", lab, "--reports", str(reports),
             *run_args], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(lambda: _triggered(phase, lab, reports) or runner.poll() is not None,
                       timeout_s=timeout_s, every_s=0.02, what=f"phase {phase!r}")
            time.sleep(delay_s)  # the random point inside the phase: the point of the test
            where, inodes = landed(lab, reports), lab_netns_inodes(lab)
            killed = runner.poll() is None
            if killed:
                runner.send_signal(signal.SIGKILL)
            rc = runner.wait()
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    t0 = time.monotonic()
    down = subprocess.run([*MESHLAB, "down", "--lab", lab], capture_output=True, text=True,
                          check=False, timeout=120)
    return {"phase": phase, "delay_s": delay_s, "killed": killed, "rc": rc, "landed": where,
            "down_s": round(time.monotonic() - t0, 2), "down_rc": down.returncode,
            "down_output": (down.stdout + down.stderr).strip().splitlines(),
            "leftovers": leftovers(lab, before, inodes)}


def baseline_passes(lab: str, suite: str = "suites/test_baseline.py") -> tuple[bool, str]:
    """The next ``up`` plus the baseline suite (or one of its tests: ``suite`` is a pytest node
    id) on ``lab``: ``(passed, the failure lines and the last lines of output)``; the lab is
    taken down after."""
    with tempfile.TemporaryDirectory(prefix="mlkill9-base-") as tmp:
        res = subprocess.run([*MESHLAB, "run", suite, "--lab", lab, "--reports", tmp],
                             capture_output=True, text=True, check=False, timeout=300,
                             cwd=HERE.parent.parent)
    subprocess.run([*MESHLAB, "down", "--lab", lab], capture_output=True, check=False,
                   timeout=120)
    lines = (res.stdout + res.stderr).splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return res.returncode == 0, "\n".join(failed + lines[-3:])
