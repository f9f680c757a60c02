"""Reverting what a dead runner left in the fault ledger (:mod:`meshlab.envs.ledger` is the
ledger's storage and describes the guarantees): ``meshlab down`` and the next ``up``
(:func:`meshlab.experiment.labs.lab_up`, ``lab_down``) call :func:`revert_leftovers`.
"""

from __future__ import annotations

from meshlab.envs.base import Env
from meshlab.envs.factory import env_from_spec
from meshlab.envs.ledger import entries, kill_deadman, ledger_dir
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
            fault = create(data["fault"], **data.get("params", {}))
            same = env is not None and env.spec() == data["env"]
            target = env if same else env_from_spec(data["env"])
            done.append(f"{data['fault']}: {entry.revert_once(fault, target, 'down')}")
        except (MeshlabError, OSError, KeyError) as exc:
            done.append(f"{data.get('fault', entry.path.name)}: not reverted ({exc})")
        entry.close()
    folder = ledger_dir(env_name, lab)
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()
    return done
