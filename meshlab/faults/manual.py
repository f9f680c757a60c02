"""Faults injected by hand (``meshlab fault inject|status|revert``), on the same ledger and
deadman as a suite's: the fault outlives the command that injected it, its deadman reverts it
at the deadline (``--duration-s``), and ``meshlab fault revert``, ``meshlab down`` or the next
``up`` revert it earlier. Compare ``toxiproxy-cli toxic add`` / ``kubectl delete
networkchaos``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from meshlab.envs.base import Env
from meshlab.envs.ledger import entries
from meshlab.errors import ConfigError
from meshlab.faults.base import start
from meshlab.faults.ledger import revert_entry
from meshlab.faults.registry import create

#: ``meshlab fault inject --duration-s`` default: the deadman reverts the fault after it.
DEFAULT_DURATION_S = 300.0


@dataclass(frozen=True)
class FaultStatus:
    """One ledger entry as ``meshlab fault status`` shows it.

    Attributes:
        id: the entry's id (``HHMMSS-<kind>-<hex>``), what ``revert`` takes.
        fault: the registry key.
        status: ``injecting``, ``active`` or ``reverted``.
        age_s: seconds since the inject began.
        remaining_s: seconds until the deadman reverts it (0 once past).
        params: the fault's parameters.
        reverted_by: ``runner``, ``deadman``, ``cli`` or ``down`` once reverted.
    """

    id: str
    fault: str
    status: str
    age_s: float
    remaining_s: float
    params: dict[str, Any]
    reverted_by: str | None


def inject(env: Env, kind: str, params: dict[str, Any],
           duration_s: float = DEFAULT_DURATION_S) -> tuple[str, str]:
    """Inject fault ``kind`` and leave it active for ``duration_s`` (its deadman reverts it).

    Returns:
        ``(ledger id, the inject's one-line output)``.

    Raises:
        ConfigError: an unknown kind, a bad parameter, an unknown pod or node, a duration that
            is not positive; nothing was changed (a failed inject is reverted).
        LabError: the inject failed (what it did is reverted).
    """
    if not duration_s > 0:
        raise ConfigError(f"--duration-s: must be > 0 seconds, got {duration_s!r}")
    fault = create(kind, **params)
    entry, output = start(fault, env, max_duration_s=duration_s)
    return entry.path.stem, output


def status(env_name: str, lab: str) -> list[FaultStatus]:
    """Every fault of this env/lab in the ledger (active, or reverted and not cleared)."""
    now = time.time()
    out = []
    for entry in entries(env_name, lab):
        data = entry.read()
        if data is None:
            continue
        out.append(FaultStatus(
            id=str(data["id"]), fault=str(data["fault"]), status=str(data["status"]),
            age_s=round(now - float(data["started_epoch_s"]), 1),
            remaining_s=round(max(0.0, float(data["deadline_epoch_s"]) - now), 1),
            params=dict(data.get("params") or {}), reverted_by=data.get("reverted_by")))
    return out


def revert(env_name: str, lab: str, fault_id: str | None, env: Env | None = None) -> list[str]:
    """Revert one fault by ledger id, or every fault of the lab (``fault_id`` None), and clear
    its entry; a fault its deadman already reverted is only cleared.

    Args:
        env_name: ``local`` or ``kube``.
        lab: the lab name.
        fault_id: a ledger id from :func:`status`, or None for all.
        env: the env to revert with when it has the entry's spec (default: rebuilt from it).

    Returns:
        One line per fault: ``<id>: <revert output>``.

    Raises:
        ConfigError: no fault with that id (the active ids are named).
    """
    chosen = [e for e in entries(env_name, lab) if fault_id in (None, e.path.stem)]
    if fault_id is not None and not chosen:
        known = ", ".join(e.path.stem for e in entries(env_name, lab)) or "none"
        raise ConfigError(f"fault id {fault_id!r}: no such fault in lab {lab!r} "
                          f"(active: {known})")
    lines = []
    for entry in chosen:
        try:
            lines.append(f"{entry.path.stem}: {revert_entry(entry, env, 'cli')}")
        finally:
            entry.close()
    return lines
