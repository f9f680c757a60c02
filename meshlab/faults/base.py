"""Starting and stopping a fault under the ledger, and the always-rollback context manager.

What a fault is: :mod:`meshlab.faults.protocol`; faults by name: :mod:`meshlab.faults.registry`.

:func:`active` always reverts — on success, on an assertion failure, on any exception, on
Ctrl-C and SIGTERM (the pytest plugin and the CLI turn SIGTERM into KeyboardInterrupt), and
when the fault outlives ``max_duration_s`` (the deadman reverts it even if the runner is gone)
— and records both activities plus the fault window in the run journal.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from meshlab.envs.base import Env
from meshlab.envs.ledger import LedgerEntry, fault_params
from meshlab.faults.protocol import DEFAULT_MAX_DURATION_S, Fault
from meshlab.missing import dry_run_active


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a revert runs, so a second Ctrl-C cannot cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _open_entry(fault: Fault, env: Env, max_duration_s: float | None) -> Any:
    """The fault's ledger entry and deadman; none for a test double (no ``spec()``) or in a
    suite's dry run (:func:`meshlab.missing.dry_run_scope`: the fault only prints, nothing is
    left to revert)."""
    limit = float(max_duration_s or getattr(fault, "max_duration_s", None)
                  or DEFAULT_MAX_DURATION_S)
    if not isinstance(env, Env) or dry_run_active():
        return None
    return LedgerEntry.create(env, fault, limit)


def _mark_active(fault: Fault, entry: Any) -> None:
    if entry:
        entry.update(status="active", params=fault_params(fault))


def start(fault: Fault, env: Env, max_duration_s: float | None = None) -> tuple[Any, str]:
    """Inject ``fault`` with a ledger entry and a deadman (the long-lived form of
    :func:`active`, for callers whose inject and revert are separate steps, e.g. chaostoolkit).

    Args:
        fault: the fault.
        env: the env; one without ``spec()`` (a test double) gets no ledger entry.
        max_duration_s: deadman deadline (default: the fault's ``max_duration_s`` attribute,
            else :data:`~meshlab.faults.protocol.DEFAULT_MAX_DURATION_S`).

    Returns:
        ``(entry, inject output)``: the :class:`~meshlab.envs.ledger.LedgerEntry` (None
        without ledger) to pass to :func:`stop`.

    Raises:
        Whatever inject raised, after reverting what it may have done.
    """
    entry = _open_entry(fault, env, max_duration_s)
    try:
        output = fault.inject(env)
    except BaseException:
        stop(fault, env, entry)
        raise
    _mark_active(fault, entry)
    return entry, output


def stop(fault: Fault, env: Env, entry: Any) -> tuple[str, dict[str, Any] | None]:
    """Revert ``fault`` (unless its deadman already did) and close its ledger entry.

    Returns:
        ``(revert output, the entry's last fields or None)``; ``reverted_by`` in the fields
        says who reverted (``runner``/``deadman``).
    """
    with _signals_deferred():
        try:
            out = entry.revert_once(fault, env, "runner") if entry else fault.revert(env)
        finally:
            last = entry.close() if entry else None
    return out, last


@contextmanager
def active(fault: Fault, env: Env, journal: Any | None = None,
           on_window: Callable[[float, float], None] | None = None,
           max_duration_s: float | None = None) -> Iterator[Fault]:
    """Inject ``fault`` for the duration of the block, then always revert it (also when
    inject itself failed half-way).

    Args:
        fault: the fault.
        env: the env it acts on (an env with ``spec()`` gets a ledger entry and a deadman).
        journal: a :class:`~meshlab.journal.RunJournal` to record ``inject:<name>`` /
            ``revert:<name>`` activities and the fault window in (optional).
        on_window: called with ``(start_epoch_s, end_epoch_s)`` after the revert.
        max_duration_s: see :func:`start`.

    Raises:
        Whatever inject raised (after the revert ran), or the block's exception.
    """
    holder: dict[str, Any] = {}

    def step(kind: str, fn: Callable[[Any], str]) -> None:
        if journal is None:
            fn(env)
            return
        with journal.activity(f"{kind}:{fault.name}") as rec:
            rec["output"] = fn(env)

    def do_stop(target: Any) -> str:
        text, holder["last"] = stop(fault, target, holder.get("entry"))
        return text

    t0 = time.time()
    holder["entry"] = _open_entry(fault, env, max_duration_s)
    try:
        step("inject", fault.inject)
        _mark_active(fault, holder["entry"])
        yield fault
    finally:
        try:
            step("revert", do_stop)
        finally:
            last = holder.get("last")
            end = time.time()
            if last and last.get("reverted_by") == "deadman":
                end = float(last.get("reverted_epoch_s", end))
                if journal is not None:
                    journal.data["notes"].append(
                        f"fault {fault.name} reverted by its deadman after "
                        f"max_duration_s={last.get('max_duration_s')} (the block ran longer)")
            if journal is not None:
                            journal.add_fault_window(fault.name, t0, end, fault_params(fault))
            if on_window is not None:
                on_window(t0, end)
