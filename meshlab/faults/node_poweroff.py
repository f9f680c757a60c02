"""``node-poweroff``: a worker node loses power under load (DESIGN.md §5.1, the book's
"Socket Options" chapter), then comes back.

The fault only talks to the env's :class:`~meshlab.envs.node_driver.NodeDriver`
(``env.node_driver()``), so the same suite runs on the local lab and on a cluster:

- **Local lab** (:class:`~meshlab.envs.local.node_power.LocalNodeDriver`): the node's netns is
  first cut from the underlay (its uplink veth goes down, so no FIN or RST escapes), then every
  process of every pod on it is SIGKILLed and the pods' and the node's namespaces are deleted.
  Power-on rebuilds the node, its routes, its pods' namespaces (same IPs), capture and Service
  NAT rules, starts the pods and waits until they listen; sockets and conntrack are fresh.
- **Cluster** (:class:`~meshlab.envs.ssh.SshNodeDriver`): the configured power-off command runs
  on the node over SSH (default: SysRq ``o``, an immediate power-off without sync) and the
  configured power-on command runs on the runner (IPMI, hypervisor or cloud CLI); revert then
  waits until the node answers again (sshd banner), up to :data:`POWER_ON_WAIT_S`. Kubernetes
  itself reacts on its own clock (node NotReady after ``node-monitor-grace-period``, endpoints
  removed), which the local lab does not model: there, the dead pods stay endpoints.

Hops hit: every connection to or from a pod of the node — the L1 sidecar → L2 hop when the node
runs an L2 replica. The peers are not told: their established connections stay ESTAB and
half-open, retransmitting into the void (``ss``: ``timer:(on,…)``, unacked segments) until
``tcp_retries2`` (≈ 924.6 s with Linux defaults), a ``TCP_USER_TIMEOUT``, keepalive or an
application timeout gives up; new connections' SYNs go unanswered until ARP for the node fails.

With ``duration_s`` the node powers itself on after that many seconds: it is the fault's
``max_duration_s``, so the ledger's deadman (:mod:`meshlab.envs.ledger`) does it even if the
runner hung or was killed; without it the node stays off until revert (bounded by
:data:`~meshlab.faults.protocol.DEFAULT_MAX_DURATION_S`). Revert is idempotent: powering on a node
that is up does nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from meshlab.envs.base import Env
from meshlab.errors import ConfigError, LabError
from meshlab.faults.protocol import DEFAULT_MAX_DURATION_S

POWER_ON_WAIT_S = 600.0
"""Seconds revert waits for a node to answer after its power-on command (a cluster node boots)."""
_POLL_S = 0.5


@dataclass
class NodePowerOff:
    """Power ``node`` off (like a power loss); revert powers it on.

    Args:
        node: node name, e.g. ``worknode7``.
        duration_s: power the node on by itself after this many seconds (the deadman does it,
            also when the runner is gone); None: stay off until revert.

    Raises:
        ConfigError: an empty node name or a non-positive ``duration_s``.
    """

    node: str
    duration_s: float | None = None
    name = "node-poweroff"

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node:
            raise ConfigError(f"NodePowerOff.node: must be a node name, got {self.node!r}")
        if self.duration_s is not None and not (
                isinstance(self.duration_s, int | float) and not isinstance(self.duration_s, bool)
                and math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"NodePowerOff.duration_s: must be > 0 seconds or None, "
                              f"got {self.duration_s!r}")

    @property
    def max_duration_s(self) -> float:
        """The deadman's deadline: ``duration_s``, else the ledger default."""
        return float(self.duration_s) if self.duration_s is not None else DEFAULT_MAX_DURATION_S

    def inject(self, env: Env) -> str:
        """Power the node off through ``env.node_driver()``."""
        return env.node_driver().power_off(self.node)

    def revert(self, env: Env) -> str:
        """Power the node on (no-op when it is up) and wait until it answers.

        Raises:
            LabError: the node did not come up within :data:`POWER_ON_WAIT_S`.
        """
        driver = env.node_driver()
        if driver.is_up(self.node):
            return f"{self.node}: already on"
        out = driver.power_on(self.node)
        deadline = time.monotonic() + POWER_ON_WAIT_S
        while not driver.is_up(self.node):
            if time.monotonic() > deadline:
                raise LabError(f"node {self.node} not up {POWER_ON_WAIT_S:.0f} s after power-on "
                               f"({out})")
            time.sleep(_POLL_S)
        return out
