"""Run a function in a thread of its own, inside a fresh anonymous network namespace.

``unshare(CLONE_NEWNET)`` moves only the calling thread (network namespaces are per task), so
the test process stays in the host namespace while the worker binds, listens and connects on
its own loopback; the namespace disappears with the thread. Needs root (the tests skip
otherwise). Nothing is created in the host namespace.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


def run_in_private_netns(fn: Callable[[], T], timeout_s: float = 60.0) -> T:
    """``fn()`` in a new netns with ``lo`` up; returns its result or re-raises its exception."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private network namespace")
    out: list[object] = []

    def worker() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(_CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            # a child forked from this thread inherits its namespace
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out.append(exc)

    t = threading.Thread(target=worker, name="private-netns", daemon=True)
    t.start()
    t.join(timeout_s)
    if not out:
        raise TimeoutError(f"{fn!r} did not finish within {timeout_s} s")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]  # type: ignore[return-value]
