"""Chaos Toolkit control: one meshlab run per experiment, and rollback *always*.

Declare it in an experiment (the shipped ones do)::

    "controls": [{"name": "meshlab",
                  "provider": {"type": "python", "module": "meshlab.chaostoolkit.control"}}]

- ``configure_control``: starts the meshlab run journal named after the experiment title when
  the experiment starts (so access-log counts and the report cover the whole experiment), and
  checks the lab is up (logged as an error if not) before anything is injected.
- ``after_experiment_control``: closes the meshlab journal with the experiment's outcome
  (completed → ``passed``, deviated → ``failed``, failed/aborted/interrupted → ``error``) and
  renders ``report.html``.
- ``cleanup_control``: Chaos Toolkit calls it in a ``finally`` at the very end of every run. It
  reverts any fault and stops any load still live — the case where its default rollback
  strategy skipped the rollbacks (a failed steady-state probe, Ctrl-C, SIGTERM). meshlab's
  contract is "rollback always" (DESIGN.md §6); ``--rollback-strategy always`` gives the same
  from the command line.
"""

from __future__ import annotations

import logging
from typing import Any

from meshlab.chaostoolkit import session
from meshlab.errors import MeshlabError

logger = logging.getLogger("chaostoolkit")


def configure_control(experiment: dict[str, Any] | None = None,
                      configuration: dict[str, Any] | None = None) -> None:
    """Start this experiment's meshlab session. A lab that is not up is logged here (Chaos
    Toolkit would only log a raising control at debug level) and fails the first activity."""
    try:
        session.begin(str((experiment or {}).get("title") or session.DEFAULT_RUN_NAME),
                      configuration)
    except MeshlabError as exc:
        logger.error(f"meshlab: {exc}")


def _status(journal: dict[str, Any]) -> str:
    if journal.get("deviated"):
        return "failed"
    return "passed" if journal.get("status") == "completed" else "error"


def after_experiment_control(context: Any, state: dict[str, Any] | None = None,
                             **kwargs: Any) -> None:
    """Close the meshlab run with the experiment's outcome and render its report."""
    s = session.peek()
    if s is None:
        return
    for line in s.cleanup():
        logger.warning(f"meshlab: rollback safety net: {line}")
    chaos = state or {}
    s.journal.data["notes"].append(f"chaostoolkit: status={chaos.get('status')} "
                                   f"deviated={chaos.get('deviated')}")
    report = s.close(_status(chaos))
    logger.info(f"meshlab report: {report}")


def cleanup_control() -> None:
    """Revert faults and stop loads still live, then forget the session."""
    s = session.end()
    if s is None:
        return
    lines = s.cleanup()
    for line in lines:
        logger.warning(f"meshlab: rollback safety net: {line}")
    if s.journal.data.get("partial"):
        s.journal.data["notes"] += [f"cleanup: {line}" for line in lines]
        s.close("error")
