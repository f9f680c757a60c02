"""Checks: turn run-journal data into verdicts (DESIGN.md §1, CONTRACTS.md §3).

Usage in a suite::

    from meshlab.checks import TpsAtLeast, LatencyPercentileAtMost, assert_all

    assert_all(journal, [TpsAtLeast(50, load="baseline"),
                         LatencyPercentileAtMost(99, at_most=10, load="baseline")])
"""

from meshlab.checks.base import Check, Verdict, assert_all
from meshlab.checks.load import ErrorRateAtMost, LatencyPercentileAtMost, TpsAtLeast
from meshlab.checks.response_flags import OnlyResponseFlags, ResponseFlagsCount
from meshlab.checks.sockets import SocketCount
from meshlab.checks.tcp_stats import StatAtLeast, StatAtMost, StatBounds

__all__ = [
    "Check",
    "ErrorRateAtMost",
    "LatencyPercentileAtMost",
    "OnlyResponseFlags",
    "ResponseFlagsCount",
    "SocketCount",
    "StatAtLeast",
    "StatAtMost",
    "StatBounds",
    "TpsAtLeast",
    "Verdict",
    "assert_all",
]
