"""Values a dry run did not measure (:class:`Missing`) and the scope they exist in.

A kube dry run (``--meshlab-dry-run``) sends nothing, so nothing is measured: a load's TPS and
latencies, a sidecar's stats, a socket snapshot, an access log, the output of a command a suite
reads. Inside :func:`dry_run_scope` each of those comes back as a :class:`Missing`, a NaN-like
stand-in labelled with what it stands for (``latency_us['p99'] of load 'drop-50'``), so a
suite written for real numbers runs on and prints its later steps (faults, loads, reverts).

What a suite can do with a Missing:

- arithmetic (``+ - * / // % **``, unary ``- + abs``, ``round``, ``math.floor/ceil/trunc``)
  and comparisons (``< <= > >= == !=``) give that Missing back;
- a part of it is a Missing: ``m["p99"]``, ``m.get("503", 0)``, ``m[-1]``, ``m[2:]``, and the
  text methods ``split``, ``rsplit``, ``splitlines``, ``strip``, ``lstrip``, ``rstrip``;
- a truth test (``bool``, ``if``, ``assert``, ``and``/``or``/``not``, ``in``) is True, so the
  suite goes on; it is counted in the scope (:attr:`DryRunScope.truth_tests`) and the test is
  reported as not evaluated, never as passed;
- whatever needs the real value raises :class:`~meshlab.errors.MissingMeasurement`: ``int()``,
  ``float()``, ``complex()``, use as an index (``xs[m]``, ``os.kill(m, …)``), ``len()``,
  iteration (``for``, ``list()``, ``sum()``, ``.items()``/``.keys()``/``.values()``) and a
  format spec (``f"{m:.1f}"``; a plain ``f"{m}"`` gives the label).

``str()`` and ``repr()`` are ``<not measured (dry run): <what>>`` (:data:`MARK` opens it): an
argv built from a Missing prints so, and the pytest plugin tells an assertion about a missing
measurement from one about real data by it. In the journal a Missing is ``null``
(:func:`json_default`).

Only :func:`not_measured` makes one, and only inside a :func:`dry_run_scope`, which the pytest
plugin opens around a test's run on an env that only prints (``env.dry_run``): a real run never
holds a Missing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

from meshlab.errors import MissingMeasurement

#: How the text of every Missing starts (``str``/``repr``).
MARK = "<not measured (dry run): "
_LABELS_KEPT = 5


@dataclass
class DryRunScope:
    """One open dry-run scope (see :func:`dry_run_scope`).

    Attributes:
        truth_tests: truth tests taken on a Missing so far (each taken as True).
        tested: the labels of the first few Missings truth-tested, in order.
    """

    truth_tests: int = 0
    tested: list[str] = field(default_factory=list)


_lock = threading.Lock()
_scope: DryRunScope | None = None


@contextmanager
def dry_run_scope() -> Iterator[DryRunScope]:
    """While the block runs, measurements come back as :class:`Missing` (process-wide: the
    collectors' threads see it too); scopes nest, the innermost counts.

    Yields:
        The scope's :class:`DryRunScope` (its tally of truth tests).
    """
    global _scope
    with _lock:
        previous, _scope = _scope, DryRunScope()
        scope = _scope
    try:
        yield scope
    finally:
        with _lock:
            _scope = previous


def dry_run_active() -> bool:
    """Whether a :func:`dry_run_scope` is open."""
    return _scope is not None


def not_measured(what: str) -> Missing:
    """The :class:`Missing` standing for ``what`` (e.g. ``"TPS of load 'baseline'"``).

    Raises:
        RuntimeError: no dry-run scope is open (a real run must never get a Missing).
    """
    if _scope is None:
        raise RuntimeError(f"not_measured({what!r}) outside a dry run")
    return Missing(what)


def is_missing(value: Any) -> bool:
    """Whether ``value`` is a :class:`Missing`."""
    return isinstance(value, Missing)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for journals: a Missing is ``null``, anything else that JSON
    lacks is its ``str``."""
    return None if isinstance(value, Missing) else str(value)


def _tally(what: str) -> None:
    with _lock:
        if _scope is not None:
            _scope.truth_tests += 1
            if len(_scope.tested) < _LABELS_KEPT and what not in _scope.tested:
                _scope.tested.append(what)


def _key(key: Any) -> str:
    if isinstance(key, slice):
        parts = (key.start, key.stop) if key.step is None else (key.start, key.stop, key.step)
        return ":".join("" if v is None else str(v) for v in parts)
    return str(key)


class Missing:
    """A value a dry run did not measure (the rules are in the module docstring).

    Args:
        what: what it stands for, e.g. ``"requests of load 'baseline'"``.

    Attributes:
        what: as given.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"{MARK}{self.what}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        if spec:
            self._need()
        return repr(self)

    def _need(self, *_: Any) -> NoReturn:
        raise MissingMeasurement(self.what)

    # truth tests go on (counted); real values are needed -----------------------------------
    def __bool__(self) -> bool:
        _tally(self.what)
        return True

    def __contains__(self, item: Any) -> bool:
        _tally(self.what)
        return True

    __int__ = __float__ = __complex__ = __index__ = __len__ = __iter__ = __reversed__ = _need
    items = keys = values = _need

    def __hash__(self) -> int:
        return id(self)

    # arithmetic and comparisons give the Missing back -------------------------------------
    def _same(self, *_: Any) -> Missing:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _same
    __mod__ = __rmod__ = __pow__ = __rpow__ = __divmod__ = __rdivmod__ = _same
    __neg__ = __pos__ = __abs__ = __invert__ = __round__ = __floor__ = __ceil__ = _same
    __trunc__ = __lt__ = __le__ = __gt__ = __ge__ = _same
    __eq__ = __ne__ = _same  # type: ignore[assignment]
    split = rsplit = splitlines = strip = lstrip = rstrip = _same

    # parts of it are missing too ---------------------------------------------------------
    def __getitem__(self, key: Any) -> Missing:
        return Missing(f"{self.what}[{_key(key)}]")

    def get(self, key: Any, default: Any = None) -> Missing:
        """``self[key]``: the part is as missing as the whole (``default`` is not used)."""
        return self[key]

    def __copy__(self) -> Missing:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Missing:
        return self
