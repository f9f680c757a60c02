"""``conntrack-delete``: make conntrack forget flows now (DESIGN.md §5.3-5.4).

``conntrack -D`` of the entries matching the selector (``protocol``, ``--orig-dst``,
``--orig-port-dst``, ``--state``) in one network namespace (``target``: a pod or a node) — what
an expired entry looks like, at once. A one-shot action: nothing stays changed, so ``revert`` is
a no-op (and says so). Deleting a flow's entry does not touch its sockets: its next packet is
judged as a new flow. A FIN or RST without an entry is INVALID (``tcp_conntracks`` ``sNO`` row,
net/netfilter/nf_conntrack_proto_tcp.c) and so skips the nat table — it is not
REDIRECTed/DNATed and misses the socket it was meant for — while a SYN starts a new entry that
NAT maps like any new connection (the book's "App outbound connecting timed out").

Which hop: a **pod** target acts on the pod's own table — the flows of its processes, including
Istio's capture (app → ``15001`` REDIRECT outbound, ``→ 15006`` inbound), so deleting an app's
entry there is the ephemeral-port collision's precondition. A **node** target acts on the
node's table — kube-proxy's Service DNAT of pod traffic routed through the node
(:mod:`meshlab.faults.targets`). Shortening the timeouts instead is
:mod:`meshlab.faults.conntrack_timeouts`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from meshlab.envs.base import Env
from meshlab.errors import ConfigError
from meshlab.faults.targets import param_error, require_target, target_shell
from meshlab.missing import dry_run_active, is_missing, not_measured

PROTOCOLS = ("tcp", "udp", "sctp")
# conntrack(8) --state names for TCP (conntrack-tools, src/conntrack.c tcp_states)
TCP_STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
              "TIME_WAIT", "CLOSE", "SYN_SENT2")
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


@dataclass
class ConntrackDelete:
    """Delete the conntrack entries matching a selector in one netns.

    Args:
        target: pod/workload or node name.
        protocol: ``tcp``, ``udp`` or ``sctp``.
        orig_dst: the original destination address (e.g. a ClusterIP, before DNAT/REDIRECT).
        orig_port: the original destination port.
        state: conntrack state (tcp only), e.g. ``CLOSE_WAIT``.
        deleted: filled by inject: how many entries were removed (a dry run's shell reads
            no count: None, a :class:`~meshlab.missing.Missing` in a suite's dry run).

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    protocol: str = "tcp"
    orig_dst: str | None = None
    orig_port: int | None = None
    state: str | None = None
    deleted: int | None = None
    name = "conntrack-delete"

    def __post_init__(self) -> None:
        def bad(fld: str, why: str) -> ConfigError:
            return param_error(self.name, fld, why)

        require_target(self.name, self.target)
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", f"{self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.orig_dst is not None and not is_missing(self.orig_dst):  # a dry run's: unknown
            try:
                ipaddress.ip_address(self.orig_dst)
            except ValueError:
                raise bad("orig_dst", f"{self.orig_dst!r} is not an IP address") from None
        if self.orig_port is not None and not (
                isinstance(self.orig_port, int) and 0 < self.orig_port <= 65535):
            raise bad("orig_port", f"{self.orig_port!r} is not a port (1-65535)")
        if self.state is not None and (self.protocol != "tcp" or self.state not in TCP_STATES):
            raise bad("state", f"{self.state!r}: needs protocol tcp and one of "
                               f"{', '.join(TCP_STATES)}")

    def delete_argv(self) -> list[str]:
        """``conntrack -D`` with this fault's selector (also used by
        :mod:`meshlab.probes.challenge_ack`)."""
        argv = ["conntrack", "-D", "-p", self.protocol]
        if self.orig_dst:
            argv += ["--orig-dst", self.orig_dst]
        if self.orig_port is not None:
            argv += ["--orig-port-dst", str(self.orig_port)]
        if self.state:
            argv += ["--state", self.state]
        return argv

    def _selector(self) -> str:
        return " ".join(str(arg) for arg in self.delete_argv()[2:])  # a dry run's: a label

    def inject(self, env: Env) -> str:
        """Delete the matching entries.

        Raises:
            LabError: ``conntrack`` failed (no match is not a failure).
        """
        shell = target_shell(env, self.target, self.name)
        res = shell.run(self.delete_argv(), check=False)
        if getattr(shell, "dry_run", False):
            self.deleted = not_measured(f"entries deleted by {self._selector()}") \
                if dry_run_active() else None  # type: ignore[assignment]
            return f"{shell.name}: conntrack entries deleted (dry run) ({self._selector()})"
        found = _DELETED.search(res.stderr + res.stdout)
        if not found:  # exit 1 with "0 flow entries" is fine; anything else is not
            shell.run(self.delete_argv())
        self.deleted = int(found.group(1)) if found else 0
        return f"{shell.name}: deleted {self.deleted} conntrack entries ({self._selector()})"

    def revert(self, env: Env) -> str:
        """Nothing to undo: deleting entries is a one-shot action."""
        return "nothing to revert: deleted conntrack entries are a one-shot action"
