"""One way to wait for a condition: poll it with a deadline (never a bare sleep).

Used by suites, tests and the kernel probe wherever the lab is asked "has X happened yet?".
In a dry run (:func:`meshlab.missing.dry_run_scope`) nothing happens in the cluster, so a
condition that does not hold at the first poll never will: the wait returns at once, its value
a :class:`~meshlab.missing.Missing` (``<what> (not waited for)``), instead of polling empty
answers until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from meshlab.errors import LabError, MissingMeasurement
from meshlab.missing import dry_run_active, not_measured

T = TypeVar("T")


class PollTimeout(LabError, AssertionError):
    """The condition did not hold within the deadline (also an AssertionError, so pytest
    reports it as a test failure).

    Attributes:
        last: the last value ``fn`` returned (for a caller's own diagnosis).
    """

    def __init__(self, message: str, last: object = None) -> None:
        super().__init__(message)
        self.last = last


def wait_until(fn: Callable[[], T], ok: Callable[[T], bool] = bool, *, timeout_s: float,
               what: str = "condition", every_s: float = 0.05) -> T:
    """Call ``fn`` every ``every_s`` seconds until ``ok(value)``; return that value.

    Args:
        fn: produces the value to test (e.g. a socket snapshot).
        ok: the condition on it (default: truthiness).
        timeout_s: give up after this many seconds.
        what: what is waited for, for the error message.
        every_s: poll interval in seconds.

    Returns:
        The value ``ok`` accepted; in a dry run, when ``ok`` does not hold at once or needs
        the real value of a Missing, a Missing ``<what> (not waited for)``.

    Raises:
        PollTimeout: ``ok`` never held; the message names ``what`` and the last value (also
            its ``last`` attribute).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = fn()
            met = ok(value)
        except MissingMeasurement:
            if not dry_run_active():
                raise
            met = False
        if met:
            return value
        if dry_run_active():
            return not_measured(f"{what} (not waited for)")  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise PollTimeout(f"{what}: not seen within {timeout_s:g} s (last: {value!r:.300})",
                              last=value)
        time.sleep(every_s)  # poll interval
