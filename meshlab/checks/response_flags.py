"""Checks over Envoy response flags collected per sidecar (CONTRACTS.md §3 ``sidecars``).

The journal holds ``sidecars.<pod>.response_flags.<cluster>.<flag> = count``; flag ``-`` means
"no flag" (a normal response). Envoy joins several flags with commas (``UF,URX``), so a key counts
towards every flag it lists. Flags tell who failed (DESIGN.md §5.6): ``UF`` upstream connect
failure, ``UC`` upstream connection terminated, ``UH`` no healthy upstream, ``NR`` no route,
``DC`` downstream terminated, ``UT`` upstream timeout, ``URX`` retry limit exceeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

from meshlab.checks.base import (
    Check,
    Verdict,
    bounds_text,
    find_response_flags,
    flag_counts,
    in_bounds,
    validate_bounds,
)
from meshlab.errors import ConfigError

#: The flag Envoy logs when a response carries no flag.
NO_FLAG = "-"


def split_flags(key: str) -> list[str]:
    """Split a response_flags key into single flags: ``"UF,URX" -> ["UF", "URX"]``."""
    return [part.strip() for part in key.split(",") if part.strip()] or [NO_FLAG]


@dataclass(frozen=True)
class ResponseFlagsCount(Check):
    """The number of responses carrying ``flag`` on one sidecar is within bounds.

    Args:
        pod: the sidecar's pod name.
        cluster: one Envoy cluster name (e.g. ``outbound|8080||svc.ns.svc.cluster.local``);
            None sums over all clusters of the sidecar.
        flag: the response flag to count, e.g. ``"UF"`` (``"-"`` counts normal responses).
        at_least: the lowest accepted count, or None.
        at_most: the highest accepted count, or None.

    Raises:
        ConfigError: neither bound given, or ``at_least > at_most``.
    """

    pod: str
    _: KW_ONLY
    cluster: str | None = None
    flag: str = "UF"
    at_least: int | None = None
    at_most: int | None = None
    name: ClassVar[str] = "response_flags_count"

    def __post_init__(self) -> None:
        validate_bounds("ResponseFlagsCount", self.at_least, self.at_most)

    @property
    def subject(self) -> str:
        """``<pod>`` or ``<pod> <cluster>``."""
        return self.pod if self.cluster is None else f"{self.pod} {self.cluster}"

    def _expected(self) -> str:
        return bounds_text(self.at_least, self.at_most, self.flag)

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        expected = self._expected()
        flags, reason = find_response_flags(journal, self.pod)
        if flags is None:
            return self._missing(self.subject, expected, reason)
        if self.cluster is not None:
            if self.cluster not in flags:
                known = ", ".join(sorted(map(str, flags))) or "none"
                return self._missing(self.subject, expected,
                                     f"no cluster {self.cluster!r} on sidecar {self.pod!r} "
                                     f"(clusters: {known})")
            clusters = [flags[self.cluster]]
            where = f"cluster {self.cluster!r}"
        else:
            clusters = list(flags.values())
            where = "all clusters"
        count = sum(n for by_flag in clusters for key, n in flag_counts(by_flag).items()
                    if self.flag in split_flags(key))
        passed = in_bounds(count, self.at_least, self.at_most)
        return self._verdict(self.subject, expected, f"{count} {self.flag}", passed,
                             f"count of response flag {self.flag!r} on sidecar {self.pod!r} "
                             f"({where}) is {count}, expected {expected}")


@dataclass(frozen=True)
class OnlyResponseFlags(Check):
    """Every response seen by the sidecar(s) carries only allowed flags.

    Args:
        pod: one sidecar's pod name; None checks every sidecar in the journal.
        allowed: the accepted flags; the default ``{"-"}`` accepts only normal responses.
    """

    pod: str | None = None
    _: KW_ONLY
    allowed: frozenset[str] = field(default_factory=lambda: frozenset({NO_FLAG}))
    name: ClassVar[str] = "only_response_flags"

    def __post_init__(self) -> None:
        allowed = self.allowed
        if isinstance(allowed, str) or not isinstance(allowed, Iterable):
            raise ConfigError(
                f"OnlyResponseFlags: allowed must be a set of flags, got {allowed!r}")
        object.__setattr__(self, "allowed", frozenset(allowed))

    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        allowed_text = ", ".join(sorted(self.allowed)) or "nothing"
        expected = f"only {allowed_text}"
        subject = self.pod if self.pod is not None else "all sidecars"
        if self.pod is not None:
            pods = [self.pod]
        else:
            sidecars = journal.get("sidecars")
            pods = sorted(map(str, sidecars)) if isinstance(sidecars, Mapping) else []
            if not pods:
                return self._missing(subject, expected, "no sidecars collected")
        offenders: list[str] = []
        total = 0
        for pod in pods:
            flags, reason = find_response_flags(journal, pod)
            if flags is None:
                return self._missing(subject, expected, reason)
            for cluster, by_flag in sorted(flags.items(), key=lambda kv: str(kv[0])):
                for key, count in sorted(flag_counts(by_flag).items()):
                    bad = [f for f in split_flags(key) if f not in self.allowed]
                    if bad and count > 0:
                        total += count
                        offenders.append(f"{key}={count} on {pod} {cluster}")
        if not offenders:
            return self._verdict(subject, expected, expected, True,
                                 f"response flags on {subject} are {expected}")
        observed = "; ".join(offenders)
        return self._verdict(subject, expected, observed, False,
                             f"{total} responses on {subject} carry flags outside "
                             f"{{{allowed_text}}}: {observed}")
