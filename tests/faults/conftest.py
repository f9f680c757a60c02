"""Fixtures of the fault tests on a real lab: one lab per module (named by the module's
``LAB``), and ``unchanged``, which fails a test that left anything behind."""

from __future__ import annotations

import pytest

from meshlab.envs.ledger import entries


@pytest.fixture(scope="module")
def lab(request, running_lab):
    """A base lab named by the test module's ``LAB``, up for the module, then torn down and
    checked for leftovers."""
    with running_lab(request.module.LAB) as env:
        yield env


@pytest.fixture
def unchanged(lab):
    """Fails the test if the lab's rules, sysctls, processes, namespaces or fault ledger differ
    afterwards."""
    from meshlab.envs.local.fingerprint import diff

    before = lab.fingerprint()
    yield
    assert diff(before, lab.fingerprint()) == []
    assert entries("local", lab.lab) == []
