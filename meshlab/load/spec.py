"""The load specification shared by the driver and the runner process.

Kept free of heavy imports: the runner validates its arguments with :class:`LoadSpec` before it
imports gevent/locust, and the driver imports it in the suite process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from meshlab.errors import ConfigError

MAX_DURATION_S = 3600.0
"""Longest load a spec may ask for, in seconds."""
MAX_USERS = 10_000
"""Most concurrent users (greenlets, each with its own connection) one runner may start."""
MODES = ("closed-loop", "open-loop")
"""Load modes: Locust users (:mod:`meshlab.load.locust_runner`) or the constant-rate schedule
(:mod:`meshlab.load.open_loop`)."""
POOL_FIELD = {"closed-loop": "users", "open-loop": "connections"}
"""The spec field that sizes each mode's connection pool (a closed-loop user is one keep-alive
connection): what ``processes`` splits and a merge sums back (:mod:`meshlab.load.group`,
:mod:`meshlab.load.merge`)."""
DISTRIBUTIONS = ("constant", "poisson")
"""Open-loop inter-arrival distributions (:func:`meshlab.load.schedule.offsets_s`)."""
DEFAULT_CONNECTIONS = 64
"""The runner CLI's ``--connections`` when neither it nor ``--users`` (optional in open loop) is
given; otherwise the spec's default, ``users``. Connections open on demand (a slow rate uses few)."""
MAX_PROCESSES = 64
"""Most runner processes one load may be split into (:attr:`LoadSpec.processes`)."""


def _fail(field_name: str, message: str) -> ConfigError:
    return ConfigError(f"LoadSpec.{field_name}: {message}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """What load to drive.

    Attributes:
        url: target ``http://`` or ``https://`` URL, as seen from where the runner runs.
        users: concurrent Locust users (each one keep-alive connection, one request at a time);
            closed-loop only (an open-loop result reports it as given).
        rate_per_s: aggregate request rate in requests/s, or None for as fast as possible
            (closed-loop only: open-loop needs a rate).
        duration_s: run time in seconds (0 < duration_s <= 3600); the runner stops hard then.
        max_requests: stop after this many requests (None = no limit).
        timeout_s: connect and per-read socket timeout of each request, in seconds.
        name: label of the load in the run journal (``loads[].name``).
        mode: ``"closed-loop"`` (Locust users, the default) or ``"open-loop"`` (requests
            started on a schedule at ``rate_per_s`` whatever the target's speed, latency
            corrected for coordinated omission; :mod:`meshlab.load.open_loop`).
        distribution: open-loop inter-arrival times: ``"constant"`` or ``"poisson"``.
        connections: open-loop keep-alive connection pool size (1..10000; None, the default,
            means ``users``, so switching a load's mode keeps its connection count): more
            requests in flight wait for a free connection (and count as late).
        seed: open-loop RNG seed of the Poisson arrivals.
        processes: runner processes the load is split into (1..64): each gets ``rate_per_s /
            processes`` and an equal share of ``max_requests`` and of ``users`` (closed loop)
            or ``connections`` (open loop), remainders to the first ones, so each must get at
            least one; their results are merged exactly (:mod:`meshlab.load.group`,
            :mod:`meshlab.load.merge`). The runner itself always runs one process.

    Raises:
        ConfigError: a field is out of range; the message names the field.
    """

    url: str
    users: int = 1
    duration_s: float
    rate_per_s: float | None = None
    max_requests: int | None = None
    timeout_s: float = 10.0
    name: str = "load"
    mode: str = "closed-loop"
    distribution: str = "constant"
    connections: int | None = None
    seed: int = 0
    processes: int = 1

    def __post_init__(self) -> None:
        if self.connections is None:  # frozen: set the default through object
            object.__setattr__(self, "connections", self.users)
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail("url", f"must be an http:// or https:// URL with a host, got {self.url!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise _fail("url", f"bad port in {self.url!r}: {exc}") from exc
        if not isinstance(self.users, int) or isinstance(self.users, bool) or not (
                1 <= self.users <= MAX_USERS):
            raise _fail("users", f"must be an integer in 1..{MAX_USERS}, got {self.users!r}")
        if self.rate_per_s is not None and not (_is_number(self.rate_per_s)
                                                and self.rate_per_s > 0):
            raise _fail("rate_per_s", f"must be > 0 requests/s or None, got {self.rate_per_s!r}")
        if not (_is_number(self.duration_s) and 0 < self.duration_s <= MAX_DURATION_S):
            raise _fail("duration_s",
                        f"must be in (0, {MAX_DURATION_S:.0f}] seconds, got {self.duration_s!r}")
        if self.max_requests is not None and (
                not isinstance(self.max_requests, int) or isinstance(self.max_requests, bool)
                or self.max_requests < 1):
            raise _fail("max_requests", f"must be an integer >= 1 or None, "
                                        f"got {self.max_requests!r}")
        if not (_is_number(self.timeout_s) and 0 < self.timeout_s <= MAX_DURATION_S):
            raise _fail("timeout_s", f"must be in (0, {MAX_DURATION_S:.0f}] seconds, "
                                     f"got {self.timeout_s!r}")
        if not isinstance(self.name, str) or not self.name:
            raise _fail("name", f"must be a non-empty string, got {self.name!r}")
        self._check_open_loop()
        self._check_processes()

    def _check_processes(self) -> None:
        n = self.processes
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PROCESSES:
            raise _fail("processes", f"must be an integer in 1..{MAX_PROCESSES}, got {n!r}")
        pool = POOL_FIELD[self.mode]
        shared = {pool: getattr(self, pool), "max_requests": self.max_requests}
        for name, value in shared.items():
            if isinstance(value, int) and value < n:
                raise _fail("processes", f"{n} processes need {name} >= {n} (each process "
                                         f"gets a share of it), got {name}={value}")

    def _check_open_loop(self) -> None:
        if self.mode not in MODES:
            raise _fail("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise _fail("distribution", f"must be one of {', '.join(DISTRIBUTIONS)}, "
                                        f"got {self.distribution!r}")
        if not isinstance(self.connections, int) or isinstance(self.connections, bool) or not (
                1 <= self.connections <= MAX_USERS):
            raise _fail("connections", f"must be an integer in 1..{MAX_USERS}, "
                                       f"got {self.connections!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise _fail("seed", f"must be an integer, got {self.seed!r}")
        if self.mode == "open-loop" and self.rate_per_s is None:
            raise _fail("rate_per_s", "open-loop mode needs a rate (requests/s > 0): it sends "
                                      "on a schedule, never as fast as possible")
