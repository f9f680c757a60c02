"""Fixtures for the report tests: a realistic journal and a run-directory writer
(builders in _journals.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from _journals import make_journal, write_run


@pytest.fixture
def journal() -> dict[str, Any]:
    """A fresh copy of the realistic journal (tests may mutate it)."""
    return copy.deepcopy(make_journal())


@pytest.fixture(name="write_run")
def write_run_fixture():
    """The :func:`write_run` helper, for tests that build runs on disk."""
    return write_run
