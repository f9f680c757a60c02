"""Reverting what a dead runner left in the fault ledger (:mod:`meshlab.envs.ledger` is the
ledger's storage and describes the guarantees): ``meshlab down`` and the next ``up``
(:func:`meshlab.experiment.labs.lab_up`, ``lab_down``) call :func:`revert_leftovers`.
"""

from __future__ import annotations

from meshlab.envs.base import Env
from meshlab.envs.factory import env_from_spec
from meshlab.envs.ledger import LedgerEntry, entries, kill_deadman, ledger_dir
from meshlab.errors import MeshlabError
from meshlab.faults.registry import create


def revert_leftovers(env_name: str, lab: str, env: Env | None = None) -> list[str]:
    """Revert every fault a dead runner left active and remove the ledger (``meshlab down``).

    Args:
        env_name: ``local`` or ``kube``.
        lab: lab name.
        env: the env to revert with, for entries written by an env of the same spec (the
            others are reverted by an env rebuilt from their own spec).

    Returns:
        One line per entry: what was reverted, or why it could not be.
    """
    done = []
    for entry in entries(env_name, lab):
        data = entry.read() or {}
        if data.get("deadman_pid"):
            kill_deadman(int(data["deadman_pid"]))
        try:
            done.append(f"{data['fault']}: {revert_entry(entry, env, 'down')}")
        except (MeshlabError, OSError, KeyError) as exc:
            done.append(f"{data.get('fault', entry.path.name)}: not reverted ({exc})")
        entry.close()
    folder = ledger_dir(env_name, lab)
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()
    return done


def revert_entry(entry: LedgerEntry, env: Env | None, by: str) -> str:
    """Revert the fault of one ledger entry unless someone already did, recording ``by``
    (the entry stays; :meth:`LedgerEntry.close` clears it).

    Args:
        entry: the ledger entry.
        env: the env to revert with when it has the entry's spec (else one is rebuilt from
            the entry's own spec).
        by: who reverts: ``down``, ``cli``…

    Raises:
        ConfigError: the entry names an unknown fault or env.
        KeyError: the entry is incomplete.
        MeshlabError: the revert failed.
    """
    data = entry.read() or {}
    fault = create(data["fault"], **data.get("params", {}))
    same = env is not None and env.spec() == data["env"]
    return entry.revert_once(fault, env if same else env_from_spec(data["env"]), by)
