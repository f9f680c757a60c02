"""Checks turn run-journal data into verdicts (docs/CONTRACTS.md §3, ``verdicts``).

A :class:`Check` is a small immutable object built by a suite (``TpsAtLeast(50, load="baseline")``)
and evaluated against a journal dict. Evaluation never raises for missing or odd data: a check
whose subject is absent from the journal (no such load, no such sidecar) yields a *failed*
:class:`Verdict` that says what is missing, so one broken collector does not hide the other
verdicts of a run.

:func:`assert_all` is the one entry point suites use: it evaluates every check, records every
verdict in ``journal["verdicts"]`` and raises :class:`~meshlab.errors.SystemUnderTestError`
listing each failure in readable form.

In a dry run nothing was measured: :func:`record_not_evaluated` journals each check as *not
evaluated* (``passed: null``, observed ``not measured (dry run)``) instead, and a check built
from a value the dry run did not measure (a :class:`~meshlab.missing.Missing` bound, e.g.
``at_least=load.requests + 40``) is not validated either.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from meshlab.errors import ConfigError, MissingMeasurement, SystemUnderTestError
from meshlab.missing import is_missing

#: A verdict's ``observed`` when the check was not evaluated (a dry run).
NOT_MEASURED = "not measured (dry run)"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check over one journal.

    Attributes:
        check: the check's id, e.g. ``"tps_at_least"``.
        subject: what was checked, e.g. a load name or ``"<pod> <cluster>"``.
        expected: the accepted range in words, e.g. ``">= 50.0 TPS"``.
        observed: what the journal shows, e.g. ``"198.2 TPS"`` or ``"missing"``
            (:data:`NOT_MEASURED` when not evaluated).
        passed: True when ``observed`` is within ``expected``; None when the check was not
            evaluated (a dry run measured nothing).
        message: one readable sentence, e.g.
            ``"p99 latency of load 'baseline' is 12.4 ms, expected <= 10.0 ms"``.
    """

    check: str
    subject: str
    expected: str
    observed: str
    passed: bool | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Return the journal form of this verdict (CONTRACTS.md §3 ``verdicts[]``)."""
        return asdict(self)

    def __str__(self) -> str:
        tag = "NOT EVALUATED" if self.passed is None else "PASS" if self.passed else "FAIL"
        return f"[{tag}] {self.message}"


class Check(ABC):
    """Base of every check: a named predicate over a run journal.

    Subclasses are frozen dataclasses (so their repr shows their parameters), set the class
    attribute :attr:`name` and implement :meth:`evaluate`. Their ``__post_init__`` validation
    is skipped for a check with a :class:`~meshlab.missing.Missing` parameter (a dry run's:
    it is never evaluated).
    """

    name: ClassVar[str] = "check"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        validate = cls.__dict__.get("__post_init__")
        if validate is not None:
            cls.__post_init__ = _unless_unmeasured(validate)

    @abstractmethod
    def evaluate(self, journal: Mapping[str, Any]) -> Verdict:
        """Judge the journal.

        Args:
            journal: a run journal (CONTRACTS.md §3), possibly partial.

        Returns:
            The verdict; missing data gives a failed verdict, never an exception.
        """

    def not_evaluated(self) -> Verdict:
        """This check's verdict in a dry run: not evaluated (``passed`` None), with the
        subject and expected range it would have judged (when its parameters are measured)."""
        try:
            words = self.evaluate({})  # an empty journal: the check's subject and range
            subject, expected = words.subject, words.expected
        except MissingMeasurement:  # a bound the dry run did not measure
            subject = next((str(v) for v in (getattr(self, key, None) for key in
                                             ("load", "observation", "pod")) if v), "–")
            expected = repr(self)
        return self._verdict(subject, expected, NOT_MEASURED, None,
                             f"{self.name} on {subject!r}: not evaluated (dry run: nothing "
                             f"was measured), expected {expected}")

    def _verdict(self, subject: str, expected: str, observed: str, passed: bool | None,
                 message: str) -> Verdict:
        return Verdict(check=self.name, subject=subject, expected=expected, observed=observed,
                       passed=passed, message=message)

    def _missing(self, subject: str, expected: str, what: str) -> Verdict:
        """A failed verdict for data the journal does not hold.

        Args:
            subject: what the check is about.
            expected: the accepted range in words.
            what: a sentence fragment naming what is missing, e.g. ``"no load named 'x'"``.
        """
        return self._verdict(subject, expected, "missing", False,
                             f"{self.name} on {subject!r}: {what} in the journal, "
                             f"expected {expected}")


def assert_all(journal: dict[str, Any], checks: Iterable[Check]) -> list[Verdict]:
    """Evaluate every check, record the verdicts, fail if any verdict failed.

    All checks are evaluated even after a failure, and every verdict (passed or not) is
    appended to ``journal["verdicts"]`` (created when absent) before anything is raised.

    Args:
        journal: the run journal; modified in place (``verdicts`` grows).
        checks: the checks to evaluate, in report order.

    Returns:
        The verdicts, in the order of ``checks``, when all passed.

    Raises:
        SystemUnderTestError: one or more verdicts failed; the message lists each failed
            verdict's message on its own line.
    """
    verdicts = [check.evaluate(journal) for check in checks]
    journal.setdefault("verdicts", []).extend(v.to_dict() for v in verdicts)
    failed = [v for v in verdicts if not v.passed]
    if failed:
        lines = "\n".join(f"  - {v.message}" for v in failed)
        raise SystemUnderTestError(
            f"{len(failed)} of {len(verdicts)} checks failed:\n{lines}")
    return verdicts


def record_not_evaluated(journal: dict[str, Any], checks: Iterable[Check]) -> list[Verdict]:
    """A dry run's :func:`assert_all`: journal every check as not evaluated, raise nothing.

    Returns:
        The verdicts (``passed`` None), in the order of ``checks``.
    """
    verdicts = [check.not_evaluated() for check in checks]
    journal.setdefault("verdicts", []).extend(v.to_dict() for v in verdicts)
    return verdicts


def _unless_unmeasured(validate: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(validate)
    def checked(self: Any) -> None:
        if not any(is_missing(value) for value in vars(self).values()):
            validate(self)
    return checked


# --- helpers shared by the check modules ------------------------------------------------------

def validate_bounds(kind: str, at_least: float | None, at_most: float | None,
                    minimum: float | None = None) -> None:
    """The ``at_least``/``at_most`` pair of a bounds check is usable.

    Raises:
        ConfigError: no bound, a bound that is not a number or is below ``minimum``, or
            ``at_least > at_most`` (the message starts with ``kind``).
    """
    bounds = {k: v for k, v in (("at_least", at_least), ("at_most", at_most)) if v is not None}
    if not bounds:
        raise ConfigError(f"{kind}: give at_least=, at_most= or both")
    for key, value in bounds.items():
        if as_number(value) is None:
            raise ConfigError(f"{kind}: {key} must be a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{kind}: {key} must be >= {minimum:g}, got {value}")
    if len(bounds) == 2 and bounds["at_least"] > bounds["at_most"]:
        raise ConfigError(f"{kind}: at_least={at_least} is greater than at_most={at_most}")


def bounds_text(at_least: float | None, at_most: float | None, unit: str = "") -> str:
    """``">= 3 UC"``, ``"<= 0 UC"`` or ``"between 1 and 5 UC"`` (``unit`` after the numbers)."""
    tail = f" {unit}" if unit else ""
    if at_most is None:
        return f">= {at_least:g}{tail}"
    if at_least is None:
        return f"<= {at_most:g}{tail}"
    return f"between {at_least:g} and {at_most:g}{tail}"


def in_bounds(value: float, at_least: float | None, at_most: float | None) -> bool:
    """``at_least <= value <= at_most`` with open ends for None."""
    return (at_least is None or value >= at_least) and (at_most is None or value <= at_most)


def as_number(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None when it is not a usable number.

    Booleans, strings, NaN and infinities are rejected so that a malformed journal field reads
    as "missing" instead of producing a nonsense comparison.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def find_load(journal: Mapping[str, Any], load: str) -> tuple[Mapping[str, Any] | None, str]:
    """Find the load result named ``load`` in ``journal["loads"]``.

    Args:
        journal: the run journal.
        load: the load's ``name``.

    Returns:
        ``(result, "")`` when found, else ``(None, reason)`` with a readable reason naming the
        loads that do exist.
    """
    loads = journal.get("loads")
    if not isinstance(loads, list) or not loads:
        return None, f"no load named {load!r} (the journal has no loads)"
    names = []
    for item in loads:
        if isinstance(item, Mapping):
            if item.get("name") == load:
                return item, ""
            names.append(str(item.get("name")))
    return None, f"no load named {load!r} (loads: {', '.join(names) or 'none'})"


def find_response_flags(journal: Mapping[str, Any],
                        pod: str) -> tuple[Mapping[str, Any] | None, str]:
    """Find ``journal["sidecars"][pod]["response_flags"]`` (cluster -> flag -> count).

    Args:
        journal: the run journal.
        pod: the sidecar's pod name.

    Returns:
        ``(flags_by_cluster, "")`` when found, else ``(None, reason)``.
    """
    sidecars = journal.get("sidecars")
    if not isinstance(sidecars, Mapping) or not sidecars:
        return None, f"no sidecar data for pod {pod!r} (no sidecars collected)"
    sidecar = sidecars.get(pod)
    if not isinstance(sidecar, Mapping):
        return None, (f"no sidecar data for pod {pod!r} "
                      f"(pods: {', '.join(sorted(map(str, sidecars)))})")
    flags = sidecar.get("response_flags")
    if not isinstance(flags, Mapping):
        return None, f"no response_flags collected for pod {pod!r}"
    return flags, ""


def flag_counts(by_flag: Any) -> dict[str, int]:
    """Return the usable ``flag -> count`` entries of one cluster's response_flags mapping."""
    if not isinstance(by_flag, Mapping):
        return {}
    counts = {}
    for flag, count in by_flag.items():
        number = as_number(count)
        if number is not None:
            counts[str(flag)] = int(number)
    return counts
