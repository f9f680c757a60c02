"""Fixtures of the kube env tests that act on a running base lab: the in-test API server with
the base lab's two nodes opted in, and the lab brought up on it through the real client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kube_fake_server import OPT_IN, FakeKube, kube_env


@pytest.fixture
def opted_in_fake() -> Iterator[FakeKube]:
    """A :class:`FakeKube` with worknode5 and worknode6, both carrying the opt-in label."""
    with FakeKube() as server:
        server.add_node("worknode5", OPT_IN)
        server.add_node("worknode6", OPT_IN)
        yield server


@pytest.fixture
def base_lab(opted_in_fake, tmp_path):
    """The base lab, up on :func:`opted_in_fake`."""
    lab = kube_env(opted_in_fake, tmp_path)
    lab.up()
    return lab
