"""Node access on a cluster (a mixin of :class:`~meshlab.envs.kube.env.KubeEnv`): node labels,
node shells (``nsenter -t 1 -n`` over SSH) and the guarded NodeDriver for node faults.

Every node operation needs ``ssh:`` in the kube settings; without it the operation is refused
with :class:`~meshlab.errors.Unsupported` saying what to set. A node must carry the opt-in
label (``settings.node_label``) before a shell or a power fault reaches it
(:mod:`meshlab.envs.kube.guardrails`); a dry run prints instead of connecting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshlab.envs.base import PodInfo, Shell
from meshlab.envs.kube.dry_run import DryRunApi, DryRunNodeDriver, PrintShell
from meshlab.envs.kube.facade import ClusterApi
from meshlab.envs.kube.guardrails import check_nodes
from meshlab.envs.kube.nodes import GuardedNodeDriver, NodeNames, ledger_nodes
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.kube.shells import NsenterShell
from meshlab.errors import Unsupported

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.envs.ssh import SshNodeDriver


class KubeNodeAccess:
    """The kube env's node operations (a mixin of :class:`~meshlab.envs.kube.env.KubeEnv`,
    which provides the attributes below)."""

    name: str
    lab: str
    api: ClusterApi
    settings: KubeSettings
    names: NodeNames
    _ssh: SshNodeDriver | None
    _driver: GuardedNodeDriver | None

    if TYPE_CHECKING:  # pragma: no cover - KubeEnv's
        def pods(self) -> list[PodInfo]: ...

    def _node_labels(self) -> dict[str, dict[str, str]]:
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {})
                for n in self.api.list_nodes()}

    def _ssh_config(self, what: str) -> Any:
        if self.settings.ssh is None:
            raise Unsupported(
                f"ssh: not configured; {what} needs SSH access to the cluster's nodes: set "
                f"ssh: {{nodes: {{<node>: <address>}}, key_file: <private key>}} in "
                f"{self.settings.source or 'the kube settings'} (docs/NODE_DRIVERS.md)")
        return self.settings.ssh

    def _ssh_driver(self) -> SshNodeDriver:
        if self._ssh is None:
            from meshlab.envs.ssh import SshNodeDriver

            self._ssh = SshNodeDriver(self._ssh_config("node commands"))
        return self._ssh

    def node_shell(self, node: str) -> Shell:
        """``nsenter -t 1 -n <argv>`` on the node over SSH, if the node is opted in.

        Raises:
            ConfigError: SSH is not configured (says what to set).
            GuardrailError: the node lacks the opt-in label.
        """
        cluster = self.names.cluster(node)
        ssh = self._ssh_config(f"node_shell({node})")
        if isinstance(self.api, DryRunApi):
            self.api.announce(f"node check skipped (dry run): {cluster} must carry "
                              f"{self.settings.node_label}")
            return NsenterShell(PrintShell(self.api, ssh, cluster))
        check_nodes(self.settings, self._node_labels(), [cluster], f"node_shell({node})")
        return NsenterShell(self._ssh_driver().shell(cluster))

    def node_driver(self) -> GuardedNodeDriver:
        """The NodeDriver for node faults (SSH), guarded by ``check_fault`` on power-off."""
        if self._driver is None:
            ssh = self._ssh_config("node faults")
            inner: Any = (DryRunNodeDriver(self.api, ssh) if isinstance(self.api, DryRunApi)
                          else self._ssh_driver())
            # a dry run cannot read node labels: the lab's nodes count as opted in, so the
            # blast-radius part of check_fault still applies
            labels = (self._node_labels if not self.api.dry_run else
                      lambda: {self.names.cluster(n): dict([self.settings.node_label_pair])
                               for n in self.names.lab_nodes})
            self._driver = GuardedNodeDriver(inner, self.settings, self.names, labels,
                                             self._pods_on,
                                             lambda: ledger_nodes(self.name, self.lab))
        return self._driver

    def _pods_on(self, cluster_node: str) -> list[str]:
        lab_node = self.names.lab(cluster_node)
        return [p.name for p in self.pods() if p.node == lab_node]
