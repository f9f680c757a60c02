"""The ``NodeDriver`` protocol: power a lab node off and on (DESIGN.md §1, §3, §4).

A node fault (:mod:`meshlab.faults.node_poweroff`) only talks to this protocol, obtained from
``env.node_driver()``; it never knows how a node is switched:

- local lab: :class:`meshlab.envs.local.node_power.LocalNodeDriver` cuts the node's netns from
  the underlay first (so no FIN/RST escapes), SIGKILLs its pods' processes and deletes its
  namespaces; power-on rebuilds the node and its pods and waits until they are ready.
- cluster: :class:`meshlab.envs.ssh.SshNodeDriver` runs a configured power-off command on the
  node over SSH (e.g. SysRq ``o``) and a configured power-on command on the runner (IPMI,
  hypervisor or cloud CLI); it does not wait for the node to boot.

Contract, for every implementation:

- ``power_off(node)`` returns once the node no longer answers; on a node that is already off it
  is a no-op that says so.
- ``power_on(node)`` is idempotent: on a node that is up it does nothing and says so. It may
  return before the node answers (a cluster node still boots); ``is_up`` tells when it does.
  The local driver returns once the node's pods are ready.
- ``is_up(node)`` is cheap and never raises for a node the driver knows (False when unsure).
- An unknown node raises :class:`~meshlab.errors.ConfigError` naming the known ones; a node
  that cannot be switched raises :class:`~meshlab.errors.LabError`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class NodeDriver(Protocol):
    """Switches lab nodes off and on (see the module docstring for the contract)."""

    def power_off(self, node: str) -> str:
        """Power ``node`` off like a power loss (no graceful shutdown).

        Args:
            node: node name, e.g. ``worknode7``.

        Returns:
            A one-line description of what was done, for the run journal.

        Raises:
            ConfigError: unknown node.
            LabError: the node could not be powered off.
        """
        ...

    def power_on(self, node: str) -> str:
        """Power ``node`` on again (no-op when it is up).

        Args:
            node: node name.

        Returns:
            A one-line description of what was done, for the run journal.

        Raises:
            ConfigError: unknown node, or no way to power it on is configured.
            LabError: the node could not be powered on.
        """
        ...

    def is_up(self, node: str) -> bool:
        """True when ``node`` is powered on and reachable.

        Args:
            node: node name.
        """
        ...
