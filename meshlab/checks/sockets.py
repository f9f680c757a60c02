"""Checks over socket snapshots recorded as observations (``kind == "sockets"``).

A suite records a snapshot with ``run.observe(name, "sockets", [s.to_dict() for s in
snapshot(shell)], pod=...)`` (:mod:`meshlab.collectors.sockets`); the journal then holds
``observations.<name>.data`` = a list of :class:`~meshlab.collectors.sockets.SocketInfo` dicts.
:class:`SocketCount` counts the sockets matching its filters (the same filters as
:func:`~meshlab.collectors.sockets.select`): e.g. the half-close leak is "at least one FIN-WAIT-2
socket owned by uid 1337 (the sidecar) toward the app's port, still there 5 s after the app
closed".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from meshlab.checks.base import Check, Verdict, bounds_text, in_bounds, validate_bounds
from meshlab.collectors.sockets import SocketInfo, select

_FIELDS = {f.name for f in dataclasses.fields(SocketInfo)}


def find_sockets(journal: Mapping[str, Any],
                 observation: str) -> tuple[list[SocketInfo] | None, str]:
    """The sockets of observation ``observation``, or ``(None, reason)``.

    Rows that are not socket dicts make the whole observation unusable (reason given).
    """
    observations = journal.get("observations")
    if not isinstance(observations, Mapping) or observation not in observations:
        known = ", ".join(sorted(map(str, observations))) if isinstance(observations, Mapping) \
            else ""
        return None, f"no observation named {observation!r} (observations: {known or 'none'})"
    obs = observations[observation]
    if not isinstance(obs, Mapping) or obs.get("kind") != "sockets":
        kind = obs.get("kind") if isinstance(obs, Mapping) else type(obs).__name__
        return None, f"observation {observation!r} is of kind {kind!r}, not 'sockets'"
    rows = obs.get("data")
    if not isinstance(rows, list):
        return None, f"observation {observation!r} has no socket list"
    out = []
    for row in rows:
        try:
            out.append(SocketInfo(**{k: v for k, v in row.items() if k in _FIELDS}))
        except (AttributeError, TypeError):
            return None, f"observation {observation!r} holds a row that is not a socket: {row!r}"
    return out, ""


@dataclass(frozen=True)
class SocketCount(Check):
    """The number of sockets in one snapshot matching every given filter is within bounds.

    Args:
        observation: the observation's name (kind ``sockets``).
        state: ss state, e.g. ``"FIN-WAIT-2"``, ``"CLOSE-WAIT"``, ``"ESTAB"``; None: any.
        uid: owner uid (1337 = the sidecar); None: any.
        peer_ip: peer address without port; None: any.
        peer_port: peer port; None: any.
        local_port: local port; None: any.
        at_least: lowest accepted count, or None.
        at_most: highest accepted count, or None.

    Raises:
        ConfigError: neither bound given, a negative bound, or ``at_least > at_most``.
    """

    observation: str
    _: KW_ONLY
    state: str | None = None
    uid: int | None = None
    peer_ip: str | None = None
    peer_port: int | None = None
    local_port: int | None = None
    at_least: int | None = None
    at_most: int | None = None
    name: ClassVar[str] = "socket_count"

    def __post_init__(self) -> None:
        validate_bounds("SocketCount", self.at_least, self.at_most, minimum=0)

    def _filters(self) -> dict[str, Any]:
        return {k: v for k, v in (("state", self.state), ("uid", self.uid),
                                  ("peer_ip", self.peer_ip), ("peer_port", self.peer_port),
                                  ("local_port", self.local_port)) if v is not None}

    def _expected(self) -> str:
        return bounds_text(self.at_least, self.at_most, "sockets")

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        filters = self._filters()
        what = " ".join(f"{k}={v}" for k, v in filters.items()) or "any socket"
        subject = f"{self.observation} [{what}]"
        expected = self._expected()
        sockets, reason = find_sockets(journal, self.observation)
        if sockets is None:
            return self._missing(subject, expected, reason)
        matched = select(sockets, **filters)
        count = len(matched)
        passed = in_bounds(count, self.at_least, self.at_most)
        shown = "; ".join(f"{s.state} {s.local}->{s.peer} uid={s.uid}" for s in matched[:3])
        return self._verdict(subject, expected, f"{count} sockets", passed,
                             f"sockets matching {what} in {self.observation!r}: {count}"
                             f"{f' ({shown})' if shown else ''}, expected {expected}")
