"""The Fault protocol, its registry, and the always-rollback context manager.

Contract (after Shopify/toxiproxy's toxics and ``/reset``): a fault is a small dataclass with
``inject(env)`` and an idempotent ``revert(env)``; reverting a fault that is not active, or
twice, is a no-op; a fault never leaves state behind. Its fields are its parameters (plus any
state ``inject`` saved for ``revert``, e.g. a sysctl's old value), all JSON-ready, because a
*fresh* instance built from them must be able to revert it: the deadman and ``meshlab down``
do exactly that (:mod:`meshlab.faults.ledger`).

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
from typing import Any, Protocol, runtime_checkable

from meshlab.errors import ConfigError

REGISTRY: dict[str, type] = {}


@runtime_checkable
class Fault(Protocol):
    """A fault: ``name`` (registry key), ``inject(env)``, idempotent ``revert(env)``."""

    name: str

    def inject(self, env: Any) -> str:
        """Apply the fault; returns a one-line description of what was done."""
        ...

    def revert(self, env: Any) -> str:
        """Undo the fault (idempotent); returns a one-line description."""
        ...


def register(cls: type) -> type:
    """Class decorator: make a fault available by its ``name`` (e.g. for chaostoolkit)."""
    REGISTRY[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def _load_builtin() -> None:
    import meshlab.faults  # noqa: F401  (imports every fault module, filling REGISTRY)


def create(name: str, **params: Any) -> Fault:
    """Instantiate a registered fault by name.

    Raises:
        ConfigError: unknown fault name or bad parameters.
    """
    _load_builtin()
    if name not in REGISTRY:
        raise ConfigError(f"unknown fault {name!r} (known: {', '.join(sorted(REGISTRY))})")
    try:
        return REGISTRY[name](**params)
    except TypeError as exc:
        raise ConfigError(f"fault {name!r}: {exc}") from exc


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


@contextmanager
def active(fault: Fault, env: Any, journal: Any | None = None,
           on_window: Callable[[float, float], None] | None = None,
           max_duration_s: float | None = None) -> Iterator[Fault]:
    """Inject ``fault`` for the duration of the block, then always revert it.

    Args:
        fault: the fault.
        env: the env it acts on (an env with ``spec()`` gets a ledger entry and a deadman).
        journal: a :class:`~meshlab.journal.RunJournal` to record ``inject:<name>`` /
            ``revert:<name>`` activities and the fault window in (optional).
        on_window: called with ``(start_epoch_s, end_epoch_s)`` after the revert.
        max_duration_s: the deadman reverts the fault this long after injection even if the
            block has not ended (default: the fault's ``max_duration_s`` attribute, else
            :data:`~meshlab.faults.ledger.DEFAULT_MAX_DURATION_S`).

    Raises:
        Whatever inject raised (after the revert ran), or the block's exception.
    """
    from meshlab.faults.ledger import DEFAULT_MAX_DURATION_S, LedgerEntry

    limit = float(max_duration_s or getattr(fault, "max_duration_s", None)
                  or DEFAULT_MAX_DURATION_S)
    entry = LedgerEntry.create(env, fault, limit) if hasattr(env, "spec") else None

    def revert(target: Any) -> str:
        return entry.revert_once(fault, target, "runner") if entry else fault.revert(target)

    def step(kind: str, fn: Callable[[Any], str]) -> None:
        if journal is None:
            fn(env)
            return
        with journal.activity(f"{kind}:{fault.name}") as rec:
            rec["output"] = fn(env)

    start = time.time()
    try:
        step("inject", fault.inject)
        if entry:
            from meshlab.faults.ledger import fault_params

            entry.update(status="active", params=fault_params(fault))
        yield fault
    finally:
        with _signals_deferred():
            try:
                step("revert", revert)
            finally:
                last = entry.close() if entry else None
                end = time.time()
                if last and last.get("reverted_by") == "deadman":
                    end = float(last.get("reverted_epoch_s", end))
                    if journal is not None:
                        journal.data["notes"].append(
                            f"fault {fault.name} reverted by its deadman after "
                            f"max_duration_s={limit:g} (the block ran longer)")
                if journal is not None:
                    journal.add_fault_window(fault.name, start, end)
                if on_window is not None:
                    on_window(start, end)
