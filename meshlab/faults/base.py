"""The Fault protocol, its registry, and the always-rollback context manager.

Contract (after Shopify/toxiproxy's toxics and ``/reset``): a fault is a small object with
``inject(env)`` and an idempotent ``revert(env)``; reverting a fault that is not active, or
twice, is a no-op; a fault never leaves state behind. :func:`active` always reverts — on
success, on an assertion failure, on any exception, and on Ctrl-C — and records both activities
plus the fault window in the run journal.
"""

from __future__ import annotations

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


def create(name: str, **params: Any) -> Fault:
    """Instantiate a registered fault by name.

    Raises:
        ConfigError: unknown fault name or bad parameters.
    """
    if name not in REGISTRY:
        raise ConfigError(f"unknown fault {name!r} (known: {', '.join(sorted(REGISTRY))})")
    try:
        return REGISTRY[name](**params)
    except TypeError as exc:
        raise ConfigError(f"fault {name!r}: {exc}") from exc


@contextmanager
def active(fault: Fault, env: Any, journal: Any | None = None,
           on_window: Callable[[float, float], None] | None = None) -> Iterator[Fault]:
    """Inject ``fault`` for the duration of the block, then always revert it.

    Args:
        fault: the fault.
        env: the env it acts on.
        journal: a :class:`~meshlab.journal.RunJournal` to record ``inject:<name>`` /
            ``revert:<name>`` activities and the fault window in (optional).
        on_window: called with ``(start_epoch_s, end_epoch_s)`` after the revert.
    """
    def step(kind: str, fn: Callable[[Any], str]) -> None:
        if journal is None:
            fn(env)
            return
        with journal.activity(f"{kind}:{fault.name}") as rec:
            rec["output"] = fn(env)

    start = time.time()
    try:
        step("inject", fault.inject)
        yield fault
    finally:
        step("revert", fault.revert)
        end = time.time()
        if journal is not None:
            journal.add_fault_window(fault.name, start, end)
        if on_window is not None:
            on_window(start, end)
