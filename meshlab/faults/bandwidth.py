"""``bandwidth``: limit a pod's (or a node's) throughput with a token bucket (Chaos Mesh
NetworkChaos ``bandwidth``, Toxiproxy ``bandwidth``, Linux ``tc-tbf(8)``).

- **egress**: a ``tbf`` root qdisc (its handle derived from ``shape_id``) on the target's
  ``device`` (``eth0``) in its netns: what the target sends leaves at ``rate_mbit`` at most;
  beyond ``burst_kbytes`` it queues up to ``limit_kbytes``, then drops — a TCP sender sees
  queueing delay, then loss, and its socket holds the rest (``tcpi_notsent_bytes``, Envoy's
  ``cx_tx_unsent_bytes``).
- **ingress**: Linux shapes only egress, so what arrives on ``device`` is redirected (``ingress``
  qdisc, ``u32`` match-all filter, ``mirred`` action) to an IFB device ``mlifb<id>`` created in
  the same netns, and the ``tbf`` sits on that IFB's egress — the standard IFB recipe, kept
  inside the target's netns so it works the same on a cluster's pod (debug container with
  NET_ADMIN).
- **both**: both of the above, each at ``rate_mbit``.
- **peer filter** (``peer_pod``/``peer_cidr``/``peer_port``, as Chaos Mesh's ``target``): only
  the traffic with that peer is limited — the ``tbf`` goes under a class of an ``htb`` root and
  a ``u32`` filter sends the peer's packets there (:mod:`meshlab.faults.qdisc`); the rest of the
  device's traffic (e.g. the lab's Prometheus scrapes) is not.

``tbf`` counts whole frames (Ethernet + IP + transport headers), so a payload throughput is a
few percent under the rate (1.4 KB segments: about 3 %). GSO super-segments larger than the
bucket are split by ``tbf`` itself (``tbf_segment``), so the lab's veths (TSO on) are shaped
per segment.

Revert deletes only what this fault made: the root qdisc if it is this fault's tbf or htb (by
handle), the ingress qdisc and the IFB device named after ``shape_id``. An inject onto a device
that already has a non-default root qdisc, or an ingress qdisc (another ``bandwidth`` fault),
is refused before anything is changed.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from meshlab.envs.base import Env, Shell
from meshlab.errors import ConfigError, LabError
from meshlab.faults.qdisc import (
    check_peer,
    filtered_root,
    ifb_redirect,
    peer_network,
    remove_ifb_redirect,
)
from meshlab.faults.targets import listing_shows, param_error, require_target, target_shell

NAME = "bandwidth"
DIRECTIONS = ("egress", "ingress", "both")
#: Root qdiscs a device has when nobody shaped it (kernel defaults).
DEFAULT_QDISCS = ("qdisc noqueue", "qdisc pfifo_fast", "qdisc fq_codel", "qdisc mq",
                  "qdisc fq ")
_ID = re.compile(r"[0-9a-f]{1,8}")
_DEVICE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def _positive(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise param_error(NAME, field_name, f"must be a positive number, got {value!r}")
    return float(value)


@dataclass
class Bandwidth:
    """Limit ``target``'s traffic to ``rate_mbit``.

    Args:
        target: pod/workload or node name.
        rate_mbit: the rate in Mbit/s (10^6 bits per second), > 0.
        burst_kbytes: the bucket size in KiB: how much may pass at line rate before the limit
            applies (at least one full-size frame).
        limit_kbytes: the queue in KiB behind the bucket before packets are dropped; None:
            100 ms at the rate, at least 2 × the burst.
        direction: ``egress`` (what the target sends), ``ingress`` (what it receives) or
            ``both``.
        device: the interface in the target's netns, ``eth0`` for a pod.
        peer_pod: only traffic with this pod (its IP); the rest of the device's traffic is
            not limited (Chaos Mesh's ``target``).
        peer_cidr: only traffic with this IPv4 network.
        peer_port: only packets with this port on the peer's side (TCP/UDP).
        shape_id: names the IFB device (generated; kept so a fresh instance reverts it).

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    rate_mbit: float
    burst_kbytes: float = 32.0
    limit_kbytes: float | None = None
    direction: str = "egress"
    device: str = "eth0"
    peer_pod: str | None = None
    peer_cidr: str | None = None
    peer_port: int | None = None
    shape_id: str = field(default_factory=lambda: secrets.token_hex(4))
    name = NAME

    def __post_init__(self) -> None:
        require_target(NAME, self.target)
        _positive(self.rate_mbit, "rate_mbit")
        if _positive(self.burst_kbytes, "burst_kbytes") < 2:
            raise param_error(NAME, "burst_kbytes", "must hold a full-size frame: >= 2 KiB")
        if self.limit_kbytes is not None:
            _positive(self.limit_kbytes, "limit_kbytes")
        if self.direction not in DIRECTIONS:
            raise param_error(NAME, "direction", f"must be one of {', '.join(DIRECTIONS)}, "
                                                 f"got {self.direction!r}")
        check_peer(NAME, self.peer_pod, self.peer_cidr, self.peer_port)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise param_error(NAME, "device", f"not an interface name: {self.device!r}")
        if not isinstance(self.shape_id, str) or not _ID.fullmatch(self.shape_id):
            raise param_error(NAME, "shape_id", f"must be 1-8 lowercase hex digits, got "
                                                f"{self.shape_id!r}")

    @property
    def handle(self) -> str:
        """The tbf's qdisc handle, ``<hex>:`` from ``shape_id`` (never 0 or ffff)."""
        return f"{int(self.shape_id[-4:], 16) % 0xfffe + 1:x}:"

    @property
    def ifb(self) -> str:
        """The IFB device that carries the ingress shaping, ``mlifb<shape_id>``."""
        return f"mlifb{self.shape_id}"

    def tbf(self) -> list[str]:
        """The token bucket: ``tbf`` and its options (``tc-tbf(8)``)."""
        limit = self.limit_kbytes or max(2 * self.burst_kbytes,
                                         self.rate_mbit * 1e6 / 8 * 0.1 / 1024)
        return ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst",
                f"{round(self.burst_kbytes * 1024)}", "limit", f"{round(limit * 1024)}"]

    def _has_ifb(self, shell: Shell) -> bool:
        res = shell.run(["ip", "link", "show", self.ifb], check=False)
        return res.ok and self.ifb in res.stdout  # a dry run prints nothing: not there

    def commands(self, peer: str | None = None) -> list[list[str]]:
        """Every command inject runs, in order, for the peer filter ``peer`` (an IPv4 network,
        or None)."""
        cmds = []
        if self.direction in ("egress", "both"):
            cmds += filtered_root(self.device, self.handle, self.tbf(), peer, self.peer_port,
                                  "dst")
        if self.direction in ("ingress", "both"):
            cmds += [*ifb_redirect(self.device, self.ifb),
                     *filtered_root(self.ifb, self.handle, self.tbf(), peer, self.peer_port,
                                    "src")]
        return cmds

    def _ours(self, root: str) -> bool:
        """Whether a root qdisc listing is this fault's (tbf, or htb with the tbf under it)."""
        return f"tbf {self.handle} " in root or f"htb {self.handle} " in root

    def _root_qdisc(self, shell: Shell) -> str:
        res = shell.run(["tc", "qdisc", "show", "dev", self.device, "root"], check=False)
        if not res.ok:
            raise ConfigError(f"{NAME}: device: no {self.device!r} in {shell.name} "
                              f"({res.stderr.strip()})")
        return res.stdout.strip()

    # protocol ----------------------------------------------------------------------------
    def inject(self, env: Env) -> str:
        """Install the shaping (see the module docstring).

        Raises:
            ConfigError: an unknown target or device.
            LabError: the device is already shaped (another ``bandwidth`` fault).
            CommandError: a tc/ip command failed (the caller reverts what was done).
        """
        shell = target_shell(env, self.target, NAME)
        peer = peer_network(env, NAME, self.peer_pod, self.peer_cidr)
        root = self._root_qdisc(shell)
        if self._ours(root) or self._has_ifb(shell):
            return f"already active on {shell.name} ({root})"
        if self.direction != "ingress" and root and not root.startswith(DEFAULT_QDISCS):
            raise LabError(f"{NAME}: {shell.name} {self.device} already has root qdisc "
                           f"{root!r}: revert that fault first")
        if self.direction != "egress" and "ingress ffff:" in shell.run(
                ["tc", "qdisc", "show", "dev", self.device, "ingress"], check=False).stdout:
            raise LabError(f"{NAME}: {shell.name} {self.device} already has an ingress qdisc: "
                           f"revert that fault first")
        for cmd in self.commands(peer):
            shell.run(cmd)
        only = (f" with {peer or 'any'}{f' port {self.peer_port}' if self.peer_port else ''}"
                if peer or self.peer_port else "")
        return (f"{shell.name}: {self.direction} of {self.device}{only} limited to "
                f"{self.rate_mbit:g} Mbit/s (burst {self.burst_kbytes:g} KiB)")

    def revert(self, env: Env) -> str:
        """Remove this fault's qdiscs and IFB device (idempotent)."""
        shell = target_shell(env, self.target, NAME)
        done = []
        if listing_shows(shell, ["tc", "qdisc", "show", "dev", self.device, "root"], self._ours,
                         made=self.direction != "ingress"):
            shell.run(["tc", "qdisc", "del", "dev", self.device, "root"])
            done.append("root qdisc")
        if remove_ifb_redirect(shell, self.device, self.ifb, made=self.direction != "egress"):
            done.append(f"ingress redirect and {self.ifb}")
        return f"{shell.name}: removed {', '.join(done) or 'nothing (not active)'}"
