"""What a local lab left on the machine: the one scan behind every "down leaves nothing" check
(``tests/conftest.py``'s ``lab_leftovers`` fixture and the kill -9 harness in
``tests/reliability/kill9_harness.py``, which adds the host-namespace and process checks a
SIGKILLed runner needs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from meshlab.envs.ledger import ledger_dir
from meshlab.envs.local.cgroups import TREE, Cgroups
from meshlab.envs.local.plan import lab_prefix
from meshlab.envs.local.state import LabState
from meshlab.errors import LabError

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _named(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix)) \
        if folder.is_dir() else []


def _cgroup_dirs(lab: str) -> list[str]:
    """``meshlab/<lab>`` under this runner's cgroup bases and under any other parent (a runner
    started from another cgroup puts its pods there), v1 or v2."""
    try:
        mine = [d for d in Cgroups().dirs(Cgroups.rel(lab)).values() if d.exists()]
    except LabError:
        mine = []
    anywhere = [root / lab for root in _CGROUP_ROOT.glob(f"**/{TREE}") if (root / lab).exists()]
    return sorted({str(d) for d in mine + anywhere})


def _ledger(lab: str) -> list[str]:
    """``<entry file>: <status>`` for each fault ledger entry of local lab ``lab`` (an entry
    left after ``down`` is a fault still marked active)."""
    folder = ledger_dir("local", lab)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            status = json.loads(path.read_text() or "{}").get("status")
        except (OSError, ValueError):
            status = "unreadable"
        out.append(f"{path.name}: {status}")
    return out


def lab_leftovers(lab: str) -> dict[str, list]:
    """Everything of local lab ``lab`` still on the machine, by kind; ``{}`` when clean.

    Kinds (each only when non-empty): ``netns`` (``/run/netns`` entries, Paths), ``etc``
    (``/etc/netns`` folders, Paths), ``procs`` (``<pid> <command line>`` of processes naming
    the lab's state folder), ``cgroups`` (paths), ``state`` (the state folder), ``ledger``
    (``<entry>: <status>``).
    """
    prefix = lab_prefix(lab)
    procs = subprocess.run(["pgrep", "-af", f"{LabState.dir_for(lab)}/"], capture_output=True,
                           text=True, check=False).stdout.splitlines()
    state = [str(LabState.dir_for(lab))] if LabState.dir_for(lab).exists() else []
    found = {"netns": _named(Path("/run/netns"), prefix),
             "etc": _named(Path("/etc/netns"), prefix), "procs": procs,
             "cgroups": _cgroup_dirs(lab), "state": state, "ledger": _ledger(lab)}
    return {k: v for k, v in found.items() if v}


def leftover_lines(found: dict[str, list]) -> list[str]:
    """:func:`lab_leftovers`' result as one line per item (``netns ml-x-c``, ``process 123``…)."""
    label = {"netns": "netns", "etc": "/etc/netns folder", "procs": "process",
             "cgroups": "cgroup", "state": "state folder", "ledger": "ledger entry"}
    return [f"{label[kind]} {getattr(item, 'name', item)}"[:160] for kind, items in found.items()
            for item in items]
