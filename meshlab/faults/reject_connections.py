"""``reject-connections``: a pod's port answers every TCP packet with a RST, as a closed port.

Local lab: in the target pod's netns, ``iptables -I INPUT -p tcp -m conntrack --ctorigdstport
<port> -j REJECT --reject-with tcp-reset``. Matching the *original* destination port makes it hit
the app port even though Istio's capture has already redirected inbound traffic to 15006, so
the hop that fails is "caller → this pod". New connections are refused: a meshed caller's
sidecar sees a connect failure (``UF``; with Istio's default retries ``UF,URX``), an unmeshed
caller sees ``connection refused``. An established (pooled) connection gets a RST on its next
packet, as if the process behind the port had died (a request in flight on it: ``UC``).

Cluster: the same argv runs in the pod's netns through a debug container with NET_ADMIN.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.envs.base import Env


@dataclass
class RejectConnections:
    """Refuse new connections to ``port`` of pod ``target`` with a TCP RST.

    Args:
        target: pod or workload name.
        port: the pod's (original destination) port, e.g. 8080.
    """

    target: str
    port: int
    name = "reject-connections"

    def _rule(self) -> list[str]:
        return ["INPUT", "-p", "tcp", "-m", "conntrack", "--ctorigdstport",
                str(self.port), "-m", "comment", "--comment", f"meshlab:{self.name}",
                "-j", "REJECT", "--reject-with", "tcp-reset"]

    def inject(self, env: Env) -> str:
        """Insert the REJECT rule (once; a second inject is a no-op; a dry run's shell, where
        the ``-C`` check "succeeds", prints the insert)."""
        shell = env.pod_shell(self.target)
        if shell.run(["iptables", "-C", *self._rule()], check=False).ok and \
                not getattr(shell, "dry_run", False):
            return f"already active on {shell.name}:{self.port}"
        shell.run(["iptables", "-I", *self._rule()])
        return f"{shell.name}: TCP to port {self.port} gets RST"

    def revert(self, env: Env) -> str:
        """Delete every copy of the rule (idempotent; a dry run's shell, where every delete
        "succeeds", prints one)."""
        shell = env.pod_shell(self.target)
        removed, most = 0, 0 if getattr(shell, "dry_run", False) else 10
        while shell.run(["iptables", "-D", *self._rule()], check=False).ok and removed < most:
            removed += 1
        return f"{shell.name}: removed {removed} rule(s)"
