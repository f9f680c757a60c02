"""The open-loop schedule: when each request is meant to start, and a µs-precise wake-up timer.

Every intended start is an offset from the run's t0, computed from the request's index (constant
rate: ``i / rate``) or from the running sum of seeded exponential gaps (Poisson arrivals) — never
from how long the previous sleep actually took, so the schedule cannot drift however late the
event loop wakes up (wrk2's "constant throughput" model, https://github.com/giltene/wrk2).

The event loop's own timers round to whole milliseconds (libuv's ``uv_timer_start`` takes ms,
and asyncio's epoll selector rounds its timeout up to ms), which would make requests up to 1 ms
late at any rate. :class:`WakeTimer` therefore arms a Linux ``timerfd`` (CLOCK_MONOTONIC,
absolute ns expiry, ``timerfd_settime(2)``) and lets the loop watch its file descriptor: the
kernel's hrtimer wakes the loop within its timer slack (50 µs by default) of the intended start.
"""

from __future__ import annotations

import ctypes
import os
import random
import time
from collections.abc import Callable, Iterator

from meshlab.errors import ConfigError, LabError
from meshlab.load.spec import DISTRIBUTIONS

_CLOCK_MONOTONIC = 1  # include/uapi/linux/time.h
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_TIMER_ABSTIME = 1  # include/uapi/linux/timerfd.h


def offsets_s(distribution: str, rate_per_s: float, duration_s: float,
              seed: int = 0) -> Iterator[float]:
    """Intended start offsets from t0, in seconds, ascending, all ``< duration_s``.

    Args:
        distribution: ``"constant"`` (request ``i`` at ``i / rate_per_s``) or ``"poisson"``
            (exponential gaps of mean ``1 / rate_per_s`` from :class:`random.Random` seeded
            with ``seed``; the first request at 0).
        rate_per_s: mean requests per second (> 0).
        duration_s: the schedule's length in seconds.
        seed: RNG seed of the Poisson gaps (the same seed gives the same schedule).

    Yields:
        Offsets in seconds, lazily (a long run never holds its whole schedule).

    Raises:
        ConfigError: unknown distribution or a rate that is not > 0.
    """
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"distribution: expected one of {', '.join(DISTRIBUTIONS)}, "
                          f"got {distribution!r}")
    if not rate_per_s > 0:
        raise ConfigError(f"rate_per_s: must be > 0, got {rate_per_s!r}")
    if distribution == "constant":
        index = 0
        while (offset := index / rate_per_s) < duration_s:
            yield offset
            index += 1
        return
    rng = random.Random(seed)
    offset = 0.0
    while offset < duration_s:
        yield offset
        offset += rng.expovariate(rate_per_s)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, call: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise LabError(f"{call} failed: {os.strerror(err)}")
    return result


class WakeTimer:
    """A one-shot timer on ``time.monotonic_ns()``'s clock that an event loop can watch.

    Args:
        loop: an asyncio (or uvloop) event loop.
        callback: called on the loop each time the armed expiry passes.

    Raises:
        LabError: the kernel refused the timerfd.
    """

    def __init__(self, loop: object, callback: Callable[[], None]) -> None:
        self._fd = _check(_libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_CLOEXEC | _TFD_NONBLOCK),
                          "timerfd_create")
        self._loop = loop
        self._callback = callback
        self._spec = _Itimerspec()
        loop.add_reader(self._fd, self._fire)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"WakeTimer(fd={self._fd})"

    def arm_ns(self, when_ns: int) -> None:
        """Fire once at ``when_ns`` (``time.monotonic_ns()`` clock; at once if it has passed).

        Args:
            when_ns: absolute expiry in nanoseconds (> 0).
        """
        when_ns = max(when_ns, 1)  # an all-zero it_value would disarm the timer
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(when_ns, 1_000_000_000)
        _check(_libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec),
                                     None), "timerfd_settime")

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; clears readability
        except BlockingIOError:  # re-armed after it became readable: not due yet
            return
        self._callback()

    def close(self) -> None:
        """Stop watching and close the timerfd (idempotent)."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)  # type: ignore[attr-defined]
            os.close(self._fd)
            self._fd = -1


def monotonic_ns() -> int:
    """The clock of :class:`WakeTimer` (``CLOCK_MONOTONIC``), in nanoseconds."""
    return time.monotonic_ns()
