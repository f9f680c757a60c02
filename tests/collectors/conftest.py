"""Fixtures of the collector tests: a scratch network namespace (no lab)."""

from __future__ import annotations

import secrets

import pytest

from meshlab.envs.local.netns import add_netns, delete_netns


@pytest.fixture
def scratch(host_snapshot):
    """A fresh network namespace ``mltest-nl-<rand>``, deleted after the test (the host
    namespace is checked unchanged)."""
    name = f"mltest-nl-{secrets.token_hex(3)}"
    add_netns(name)
    yield name
    delete_netns(name)
