"""Shared test configuration: pytester for testing the pytest plugin itself, and fixtures for
tests that build real labs (host-namespace snapshots, lab leftovers)."""

import contextlib
import importlib
from collections.abc import Iterator

import pytest
from lab_scan import lab_leftovers

from meshlab.envs.base import run_argv

# Imported here, before any pytester run: pytester drops the modules an in-process inner
# session imported first, and a later import makes new module objects while live objects
# (a requests Session) keep the old ones ("You can only merge into CookieJar").
for _module in ("meshlab.envs.kube.api", "meshlab.envs.prometheus_api"):  # kubernetes, requests
    importlib.import_module(_module)


def host_network_snapshot() -> str:
    """The host namespace's addresses, routes and rule set (must never change)."""
    return "\n".join(run_argv(argv).stdout for argv in (["ip", "-o", "addr"], ["ip", "route"],
                                                        ["ip", "rule"]))


@pytest.fixture
def host_snapshot():
    """Asserts after the test that the host namespace's network config is unchanged."""
    before = host_network_snapshot()
    yield
    assert host_network_snapshot() == before


@pytest.fixture(name="lab_leftovers", scope="session")
def lab_leftovers_fixture():
    """The :func:`lab_leftovers` function, for tests."""
    return lab_leftovers


@contextlib.contextmanager
def running_lab(lab: str, **kwargs) -> Iterator:
    """A ``LocalEnv(lab=lab, **kwargs)`` that is up inside the block, always torn down after it
    and then checked to have left nothing behind."""
    from meshlab.envs.local.lab import LocalEnv
    from meshlab.experiment.labs import lab_down, lab_up

    env = LocalEnv(lab=lab, **kwargs)
    lab_up(env)
    try:
        yield env
    finally:
        lab_down(env)  # also reverts a fault a failed test left in the ledger
        assert lab_leftovers(lab) == {}


@pytest.fixture(name="running_lab", scope="session")
def running_lab_fixture():
    """The :func:`running_lab` context manager, for module-scoped lab fixtures."""
    return running_lab


pytest_plugins = ["pytester"]
