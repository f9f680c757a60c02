"""The fault deadman: ``python -m meshlab.faults.deadman <ledger-entry.json>``.

A detached process started by :meth:`meshlab.envs.ledger.LedgerEntry.create` before a fault
is injected. It watches the entry (every ``POLL_S``): when the entry disappears (the runner
reverted the fault and closed it) it exits; when the entry's ``deadline_epoch_s`` passes it
rebuilds the env and the fault from the entry and reverts it (``reverted_by: deadman``), so a
fault never outlives its maximum duration even if the runner hung or was killed. A watchdog,
not test synchronisation: polling a file is its whole job.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from meshlab.envs.factory import env_from_spec
from meshlab.envs.ledger import LedgerEntry
from meshlab.faults.registry import create

POLL_S = 0.1


def watch(entry: LedgerEntry) -> str:
    """Wait for the entry to go away or its deadline to pass; revert in the latter case.

    Returns:
        ``"closed"`` (runner reverted), or the revert output.
    """
    while True:
        data = entry.read()
        if data is None or data.get("status") == "reverted":
            return "closed"
        remaining = float(data["deadline_epoch_s"]) - time.time()
        if remaining <= 0:
            break
        time.sleep(min(POLL_S, remaining))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # never stop half-way through a revert
    fault = create(data["fault"], **data.get("params", {}))
    return entry.revert_once(fault, env_from_spec(data["env"]), "deadman")


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 (closed or reverted) or 1 (revert failed)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m meshlab.faults.deadman <ledger-entry.json>", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the runner's group is not ours
    entry = LedgerEntry(Path(args[0]))
    try:
        out = watch(entry)
    except Exception as exc:  # noqa: BLE001 - a watchdog logs and reports, never raises
        print(f"deadman {entry.path.name}: revert failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    if out != "closed":
        print(f"deadman {entry.path.name}: deadline passed, reverted: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
