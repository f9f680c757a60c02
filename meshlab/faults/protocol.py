"""What every fault is (sans-IO, a leaf module): the :class:`Fault` protocol and the default
limit on how long one may stay active.

Contract (after Shopify/toxiproxy's toxics and ``/reset``): a fault is a small dataclass with
``inject(env)`` and an idempotent ``revert(env)``; reverting a fault that is not active, or
twice, is a no-op; a fault never leaves state behind. Its fields are its parameters (plus any
state ``inject`` saved for ``revert``, e.g. a sysctl's old value), all JSON-ready, because a
*fresh* instance built from them must be able to revert it: the deadman and ``meshlab down``
do exactly that (:mod:`meshlab.envs.ledger`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from meshlab.envs.base import Env

#: Longest a fault stays active unless it sets ``max_duration_s``: after it the deadman
#: reverts it even if the runner is gone (seconds).
DEFAULT_MAX_DURATION_S = 300.0


@runtime_checkable
class Fault(Protocol):
    """A fault: ``name`` (registry key), ``inject(env)``, idempotent ``revert(env)``."""

    name: str

    def inject(self, env: Env) -> str:
        """Apply the fault; returns a one-line description of what was done."""
        ...

    def revert(self, env: Env) -> str:
        """Undo the fault (idempotent); returns a one-line description."""
        ...
