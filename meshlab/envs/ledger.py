"""The fault ledger and its deadman: an active fault is always recorded outside the runner.

This module is the ledger's storage, kept per env and lab (the envs read it: a lab's
fingerprint lists the active faults); :mod:`meshlab.faults.ledger` reverts what a dead runner
left.

Before a fault is injected, a ledger entry (``/run/meshlab/faults/<env>-<lab>/<id>.json``)
records its name, parameters, the env spec and a deadline (``max_duration_s``), and a detached
deadman process (:mod:`meshlab.faults.deadman`) is started. Whoever comes first reverts the
fault, under a lock, exactly once:

- the runner, when the ``with`` block ends (success, assertion, exception, Ctrl-C, SIGTERM);
- the deadman, when the deadline passes (the runner hung, was killed, or the fault outlived
  its maximum duration) — it rebuilds the env and the fault from the entry, as toxiproxy's
  ``/reset`` would;
- ``meshlab down`` / the next ``up`` (:func:`~meshlab.faults.ledger.revert_leftovers`, called by
  :func:`meshlab.experiment.labs.lab_up` and ``lab_down``), for entries left by a runner
  killed with ``kill -9`` whose deadman was killed too.

Entry fields: ``id, fault, params, env, status (injecting|active|reverted), started_epoch_s,
deadline_epoch_s, max_duration_s, deadman_pid, reverted_by (runner|deadman|down), revert_output``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshlab.envs.base import STATE_ROOT, Env

LEDGER_ROOT = STATE_ROOT / "faults"


def ledger_dir(env_name: str, lab: str) -> Path:
    """The ledger folder of one env/lab (``/run/meshlab/faults/<env>-<lab>``)."""
    return LEDGER_ROOT / f"{env_name}-{lab}"


def fault_params(fault: Any) -> dict[str, Any]:
    """A fault's constructor parameters plus any state it saved (dataclass fields), JSON-ready."""
    if dataclasses.is_dataclass(fault):
        return json.loads(json.dumps(dataclasses.asdict(fault), default=str))  # type: ignore[arg-type]
    return {k: v for k, v in vars(fault).items() if not k.startswith("_")}


class LedgerEntry:
    """One active fault's record (see the module docstring for its fields).

    Args:
        path: the entry's JSON file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_suffix(".lock")

    def __repr__(self) -> str:
        return f"LedgerEntry(path={str(self.path)!r})"

    @classmethod
    def create(cls, env: Env, fault: Any, max_duration_s: float) -> LedgerEntry:
        """Write the entry (status ``injecting``) and start its deadman.

        Raises:
            OSError: the ledger folder cannot be written.
        """
        folder = ledger_dir(env.name, env.spec()["lab"])
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        entry = cls(folder / f"{time.strftime('%H%M%S')}-{fault.name}-{uuid.uuid4().hex[:6]}.json")
        entry.write({"id": entry.path.stem, "fault": fault.name, "params": fault_params(fault),
                     "env": env.spec(), "status": "injecting", "started_epoch_s": now,
                     "max_duration_s": max_duration_s, "deadline_epoch_s": now + max_duration_s,
                     "deadman_pid": None, "reverted_by": None, "revert_output": None})
        with open(folder / "deadman.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "meshlab.faults.deadman",
                                     str(entry.path)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        entry.update(deadman_pid=proc.pid)
        return entry

    def read(self) -> dict[str, Any] | None:
        """The entry's fields, or None once it is gone (or unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def write(self, data: dict[str, Any]) -> None:
        """Replace the entry atomically."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.path)

    def update(self, **fields: Any) -> None:
        """Set some fields (no-op once the entry is gone)."""
        data = self.read()
        if data is not None:
            data.update(fields)
            self.write(data)

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any] | None]:
        """Hold the entry's lock; yields its current fields (None if gone)."""
        self.lock_path.touch(exist_ok=True)
        with open(self.lock_path) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self.read()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def revert_once(self, fault: Any, env: Env, by: str) -> str:
        """Revert ``fault`` unless someone already did; record who did it.

        Returns:
            The revert's output, or ``"already reverted by <who> …"``.
        """
        with self.locked() as data:
            if data is not None and data.get("status") == "reverted":
                return (f"already reverted by {data.get('reverted_by')}: "
                        f"{data.get('revert_output')}")
            output = fault.revert(env)
            self.update(status="reverted", reverted_by=by, revert_output=output,
                        reverted_epoch_s=time.time())
            return output

    def close(self) -> dict[str, Any] | None:
        """Stop the deadman and delete the entry; returns its last fields."""
        data = self.read()
        if data and data.get("deadman_pid"):
            kill_deadman(int(data["deadman_pid"]))
        for p in (self.path, self.lock_path):
            p.unlink(missing_ok=True)
        return data


def kill_deadman(pid: int) -> None:
    """SIGTERM a fault's deadman process and reap it if it is this process's child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:  # reap it when it is our child (the runner started it)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def entries(env_name: str, lab: str) -> list[LedgerEntry]:
    """Ledger entries left for this env/lab, oldest first."""
    folder = ledger_dir(env_name, lab)
    return [LedgerEntry(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
