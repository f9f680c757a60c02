"""``conntrack-expiry``: make conntrack forget flows now, or sooner (DESIGN.md §5.3-5.4).

Two modes, both acting on one network namespace's conntrack table (``target``: a pod or a
node):

- ``delete``: ``conntrack -D`` of the entries matching the selector (``protocol``,
  ``--orig-dst``, ``--orig-port-dst``, ``--state``) — what an expired entry looks like, at once.
  A one-shot action: nothing stays changed, so ``revert`` is a no-op (and says so). Deleting a
  flow's entry does not touch its sockets: its next packet is judged as a new flow. A FIN or
  RST without an entry is INVALID (``tcp_conntracks`` ``sNO`` row,
  net/netfilter/nf_conntrack_proto_tcp.c) and so skips the nat table — it is not
  REDIRECTed/DNATed and misses the socket it was meant for — while a SYN starts a new entry
  that NAT maps like any new connection (the book's "App outbound connecting timed out").
- ``timeouts``: set ``net.netfilter.nf_conntrack_tcp_timeout_<key>`` (seconds) in the target
  netns, e.g. ``{"close_wait": 5}`` instead of the kernel's 60 s, so a half-closed flow's
  entry expires in seconds (time scaling, DESIGN.md §3). The old values are kept in ``saved``
  (a dataclass field, so the deadman's fresh instance restores them exactly).

Which hop: a **pod** target acts on the pod's own table — the flows of its processes, including
Istio's capture (app → ``15001`` REDIRECT outbound, ``→ 15006`` inbound), so deleting an
app's entry there is the ephemeral-port collision's precondition. A **node** target acts on
the node's table — kube-proxy's Service DNAT of pod traffic routed through the node.

Local lab: the argv runs in the target's netns (``ip netns exec``; conntrack sysctls are
per-netns since Linux 4.x, and a new netns starts from the kernel defaults). Cluster: a pod
target runs the same argv in the pod's netns through a debug container with NET_ADMIN (e.g.
``kubectl debug --profile=netadmin`` with netshoot); a node target runs it over SSH with
``nsenter -t 1 -n`` (the host netns, where kube-proxy sets its own close-wait/established
timeouts — revert restores whatever was there).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from meshlab.errors import ConfigError

MODES = ("delete", "timeouts")
PROTOCOLS = ("tcp", "udp", "sctp")
# conntrack(8) --state names for TCP (conntrack-tools, src/conntrack.c tcp_states)
TCP_STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
              "TIME_WAIT", "CLOSE", "SYN_SENT2")
# net.netfilter.nf_conntrack_tcp_timeout_<key> (Documentation/networking/nf_conntrack-sysctl)
TIMEOUT_KEYS = ("syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
                "time_wait", "close", "max_retrans", "unacknowledged")
SYSCTL_PREFIX = "net.netfilter.nf_conntrack_tcp_timeout_"
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


def target_shell(env: Any, target: str) -> Any:
    """The Shell of ``target``: a pod (or workload) name first, else a node name.

    Raises:
        ConfigError: neither a pod nor a node of the lab.
    """
    try:
        return env.pod_shell(target)
    except ConfigError:
        pass
    try:
        return env.node_shell(target)
    except ConfigError:
        raise ConfigError(f"conntrack-expiry: target: {target!r} is neither a pod nor a node "
                          f"of the lab") from None


@dataclass
class ConntrackExpiry:
    """Delete conntrack entries, or shorten TCP conntrack timeouts, in one netns.

    Args:
        target: pod/workload or node name.
        mode: ``delete`` (one-shot ``conntrack -D``) or ``timeouts`` (sysctls until revert).
        protocol: selector for ``delete``: ``tcp``, ``udp`` or ``sctp``.
        orig_dst: selector for ``delete``: the original destination address (e.g. a
            ClusterIP, before DNAT/REDIRECT).
        orig_port: selector for ``delete``: the original destination port.
        state: selector for ``delete`` (tcp only): conntrack state, e.g. ``CLOSE_WAIT``.
        timeouts: for ``timeouts``: ``{key: seconds}``, key one of :data:`TIMEOUT_KEYS`.
        saved: filled by inject (``timeouts``): ``{sysctl: old value}``; used by revert.
        deleted: filled by inject (``delete``): how many entries were removed.

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    mode: str = "delete"
    protocol: str = "tcp"
    orig_dst: str | None = None
    orig_port: int | None = None
    state: str | None = None
    timeouts: dict[str, int] | None = None
    saved: dict[str, str] = field(default_factory=dict)
    deleted: int | None = None
    name = "conntrack-expiry"

    def __post_init__(self) -> None:
        def bad(fld: str, why: str) -> ConfigError:
            return ConfigError(f"conntrack-expiry: {fld}: {why}")

        if not self.target:
            raise bad("target", "must name a pod or a node")
        if self.mode not in MODES:
            raise bad("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", f"{self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.orig_dst is not None:
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
        if self.mode == "delete":
            if self.timeouts:
                raise bad("timeouts", "only for mode 'timeouts'")
            return
        if any(v is not None for v in (self.orig_dst, self.orig_port, self.state)):
            raise bad("mode", "the orig_dst/orig_port/state selector is only for mode 'delete'")
        if self.protocol != "tcp":
            raise bad("protocol", "mode 'timeouts' sets TCP timeouts only")
        if not self.timeouts or not isinstance(self.timeouts, dict):
            raise bad("timeouts", "mode 'timeouts' needs {key: seconds}, e.g. {'close_wait': 5}")
        for key, seconds in self.timeouts.items():
            if key not in TIMEOUT_KEYS:
                raise bad("timeouts", f"unknown key {key!r} (known: {', '.join(TIMEOUT_KEYS)})")
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
                raise bad("timeouts", f"{key}: {seconds!r} is not a whole number of seconds >= 1")

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
        return " ".join(self.delete_argv()[2:])

    def inject(self, env: Any) -> str:
        """Delete the matching entries (``delete``) or set the timeouts (``timeouts``; a
        second inject keeps the values saved by the first).

        Raises:
            LabError: ``conntrack``/``sysctl`` failed.
        """
        shell = target_shell(env, self.target)
        if self.mode == "delete":
            res = shell.run(self.delete_argv(), check=False)
            found = _DELETED.search(res.stderr + res.stdout)
            if not found:  # exit 1 with "0 flow entries" is fine; anything else is not
                shell.run(self.delete_argv())
            self.deleted = int(found.group(1)) if found else 0
            return f"{shell.name}: deleted {self.deleted} conntrack entries ({self._selector()})"
        keys = [SYSCTL_PREFIX + k for k in (self.timeouts or {})]
        for key in keys:  # save every old value before changing any
            if key not in self.saved:
                self.saved[key] = shell.run(["sysctl", "-n", key]).stdout.strip()
        for key, seconds in (self.timeouts or {}).items():
            shell.run(["sysctl", "-qw", f"{SYSCTL_PREFIX}{key}={seconds}"])
        shown = ", ".join(f"{k}={v}s (was {self.saved[SYSCTL_PREFIX + k]})"
                          for k, v in (self.timeouts or {}).items())
        return f"{shell.name}: conntrack tcp timeouts {shown}"

    def revert(self, env: Any) -> str:
        """Restore the saved timeouts exactly (idempotent); ``delete`` has nothing to undo."""
        if self.mode == "delete":
            return "nothing to revert: deleted conntrack entries are a one-shot action"
        if not self.saved:
            return "nothing to revert: no timeout was changed"
        shell = target_shell(env, self.target)
        for key, value in list(self.saved.items()):
            shell.run(["sysctl", "-qw", f"{key}={value}"])
            del self.saved[key]
        return f"{shell.name}: conntrack tcp timeouts restored"
