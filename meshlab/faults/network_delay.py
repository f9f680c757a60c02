"""``network-delay``: netem on a pod's or node's traffic — delay with jitter, loss, reordering,
duplication, corruption (Chaos Mesh NetworkChaos ``delay``/``loss``/``duplicate``/``corrupt``,
Litmus ``pod-network-latency``, Toxiproxy ``latency``, ``tc-netem(8)``).

Two backends give the same observable result; the fault records which one ran
(``backend_used``):

- **netem** (``tc qdisc … netem``, where the kernel has ``sch_netem``: real cluster nodes,
  stock Debian): egress as the root qdisc of ``eth0`` — or, with a peer/port filter, under a
  class of an ``htb`` root with a ``u32`` filter sending the matching packets there
  (:mod:`meshlab.faults.qdisc`); ingress through an IFB device in the same netns (as
  ``bandwidth`` does).
- **nfqueue** (this lab's kernel has no ``sch_netem``): iptables sends the matching packets
  (``OUTPUT ! -o lo`` for egress, ``INPUT ! -i lo`` for ingress, ``FORWARD`` for a node) to
  NFQUEUE ``queue`` with ``--queue-bypass``, and a small agent in the target's netns
  (:mod:`meshlab.faults.netem_agent`, NetfilterQueue bindings to libnetfilter_queue) holds each
  packet and releases it on schedule. The agent runs detached, its pid and queue in the fault's
  fields, so the ledger's deadman and ``meshlab down`` stop it like any fault. Local lab only
  (a cluster's debug image has no Python; clusters have netem).

``backend="auto"`` tries netem first and falls back to nfqueue only when the kernel does not
know the qdisc. Accuracy of the nfqueue backend: ``benchmarks/faults.py``.

Revert removes the rules first, then stops the agent (SIGTERM: it releases what it holds), or
deletes the qdiscs and the IFB device — only this fault's, found by ``delay_id``.
"""

from __future__ import annotations

import re
import secrets
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from meshlab.envs.base import STATE_ROOT, Env, Shell
from meshlab.envs.capabilities import LocalNamespaces
from meshlab.errors import CommandError, ConfigError, LabError, Unsupported
from meshlab.faults.iptables_chain import FaultChain
from meshlab.faults.netem_agent import SKIP_MARK
from meshlab.faults.qdisc import (
    check_peer,
    filtered_root,
    ifb_redirect,
    peer_network,
    remove_ifb_redirect,
)
from meshlab.faults.targets import listing_shows, param_error, require_target, target_shell
from meshlab.polling import PollTimeout, wait_until

NAME = "network-delay"
DIRECTIONS = ("egress", "ingress", "both")
BACKENDS = ("auto", "netem", "nfqueue")
DISTRIBUTIONS = ("normal", "uniform")
PERCENTS = ("correlation_pct", "loss_pct", "reorder_pct", "duplicate_pct", "corrupt_pct")
AGENT_READY_S = 10.0
_ID = re.compile(r"[0-9a-f]{4,8}")


@dataclass
class NetworkDelay:
    """netem on ``target``'s traffic (see the module docstring).

    Args:
        target: pod/workload or node name.
        delay_ms: added delay in ms, >= 0.
        jitter_ms: spread of the delay in ms: standard deviation (normal) or half-width
            (uniform), >= 0.
        distribution: ``normal`` or ``uniform``.
        correlation_pct: netem's correlation of successive random draws, 0-100.
        loss_pct: chance of dropping a packet, 0-100.
        reorder_pct: chance of sending a packet at once, ahead of the delayed ones, 0-100
            (needs a delay, as with netem).
        duplicate_pct: chance of sending a packet twice, 0-100.
        corrupt_pct: chance of flipping one bit of a packet, 0-100.
        direction: ``egress`` (what the target sends), ``ingress`` (what it receives) or
            ``both``.
        peer_pod: only traffic with this pod (its IP).
        peer_cidr: only traffic with this IPv4 network.
        peer_port: only TCP packets with this source or destination port.
        backend: ``auto`` (netem, else nfqueue), ``netem`` or ``nfqueue``.
        delay_id: names the chain, the queue, the agent and the IFB (generated; kept so a
            fresh instance reverts the same ones).
        backend_used: filled by inject: the backend that ran.

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "normal"
    correlation_pct: float = 0.0
    loss_pct: float = 0.0
    reorder_pct: float = 0.0
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0
    direction: str = "egress"
    peer_pod: str | None = None
    peer_cidr: str | None = None
    peer_port: int | None = None
    backend: str = "auto"
    delay_id: str = field(default_factory=lambda: secrets.token_hex(3))
    backend_used: str | None = None
    name = NAME

    def __post_init__(self) -> None:
        require_target(NAME, self.target)
        for f in ("delay_ms", "jitter_ms", *PERCENTS):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (
                    f.endswith("_pct") and v > 100):
                limit = "in 0..100" if f.endswith("_pct") else ">= 0"
                raise param_error(NAME, f, f"must be a number {limit}, got {v!r}")
        if not any(getattr(self, f) for f in ("delay_ms", "loss_pct", "duplicate_pct",
                                              "corrupt_pct")):
            raise param_error(NAME, "delay_ms", "give a delay or a loss/duplicate/corrupt "
                                                "percentage (all are 0)")
        if self.reorder_pct and not self.delay_ms:
            raise param_error(NAME, "reorder_pct", "needs a delay_ms to reorder against")
        for f, allowed in (("distribution", DISTRIBUTIONS), ("direction", DIRECTIONS),
                           ("backend", BACKENDS)):
            if getattr(self, f) not in allowed:
                raise param_error(NAME, f, f"must be one of {', '.join(allowed)}, got "
                                           f"{getattr(self, f)!r}")
        check_peer(NAME, self.peer_pod, self.peer_cidr, self.peer_port)
        if not isinstance(self.delay_id, str) or not _ID.fullmatch(self.delay_id):
            raise param_error(NAME, "delay_id", f"must be 4-8 lowercase hex digits, got "
                                                f"{self.delay_id!r}")

    # names -------------------------------------------------------------------------------
    @property
    def queue(self) -> int:
        """The NFQUEUE number, from ``delay_id`` (100..65099)."""
        return int(self.delay_id[:4], 16) % 65000 + 100

    @property
    def chain(self) -> FaultChain:
        """The nfqueue backend's chain."""
        return FaultChain(f"MESHLAB-ND-{self.delay_id}", f"meshlab:{NAME}:{self.delay_id}")

    @property
    def ifb(self) -> str:
        """The netem backend's IFB device for ingress, ``mlnd<delay_id>``."""
        return f"mlnd{self.delay_id}"

    def netem_args(self) -> list[str]:
        """The ``netem`` options (``tc-netem(8)``)."""
        args = []
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                args += [f"{self.jitter_ms:g}ms", f"{self.correlation_pct:g}%",
                         "distribution", self.distribution] \
                    if self.distribution == "normal" else [f"{self.jitter_ms:g}ms",
                                                           f"{self.correlation_pct:g}%"]
        for f, word in (("loss_pct", "loss"), ("duplicate_pct", "duplicate"),
                        ("reorder_pct", "reorder"), ("corrupt_pct", "corrupt")):
            if getattr(self, f):
                args += [word, f"{getattr(self, f):g}%"]
        return args

    def agent_argv(self) -> list[str]:
        """The nfqueue backend's agent command."""
        argv = [sys.executable, "-m", "meshlab.faults.netem_agent", "--queue", str(self.queue),
                "--id", self.delay_id, "--distribution", self.distribution]
        for f in ("delay_ms", "jitter_ms", *PERCENTS):
            argv += [f"--{f.replace('_', '-')}", f"{getattr(self, f):g}"]
        return argv

    # where -------------------------------------------------------------------------------
    def _where(self, env: Env) -> tuple[Shell, bool, str | None]:
        """``(shell, is_node, peer address or None)``."""
        shell = target_shell(env, self.target, NAME)
        try:
            env.pod(self.target)
            is_node = False
        except ConfigError:
            is_node = True
        peer = peer_network(env, NAME, self.peer_pod, self.peer_cidr)
        return shell, is_node, peer

    # the nfqueue backend -----------------------------------------------------------------
    def nfqueue_rules(self, peer: str | None) -> list[list[str]]:
        """The chain's rules: matching packets to the queue; duplicates (marked) skip it."""
        ports = (["-p", "tcp", "-m", "multiport", "--ports", str(self.peer_port)]
                 if self.peer_port else [])
        to_queue = ["-m", "mark", "!", "--mark", hex(SKIP_MARK), *self.chain.tag, "-j",
                    "NFQUEUE", "--queue-num", str(self.queue), "--queue-bypass"]
        peers = [["-d", peer], ["-s", peer]] if peer else [[]]
        return [[*match, *ports, *to_queue] for match in peers]

    def nfqueue_hooks(self, is_node: bool) -> list[list[str]]:
        """Where the chain is jumped to from."""
        if is_node:
            return [["FORWARD"]]
        hooks = []
        if self.direction in ("egress", "both"):
            hooks.append(["OUTPUT", "!", "-o", "lo"])
        if self.direction in ("ingress", "both"):
            hooks.append(["INPUT", "!", "-i", "lo"])
        return hooks

    def _agent_pids(self, shell: Shell) -> list[int]:
        res = shell.run(["pgrep", "-f", f"meshlab.faults.netem_agent .*--id {self.delay_id}"],
                        check=False)
        return [int(p) for p in res.stdout.split()] if res.ok else []

    def _start_agent(self, env: Env, shell: Shell) -> None:
        folder = STATE_ROOT / env.lab
        folder.mkdir(parents=True, exist_ok=True)
        out, err = folder / f"netem-{self.delay_id}.out", folder / f"netem-{self.delay_id}.err"
        for path in (out, err):
            path.unlink(missing_ok=True)
        proc = shell.popen(self.agent_argv(), stdout=out, stderr=err)
        try:
            wait_until(lambda: proc.poll() is not None or "ready" in out.read_text(),
                       timeout_s=AGENT_READY_S, what=f"{NAME} agent ready")
        except PollTimeout as exc:
            raise LabError(f"{NAME}: the agent did not bind queue {self.queue}: {exc}") from exc
        if proc.poll() is not None:
            raise LabError(f"{NAME}: the agent exited {proc.returncode}: "
                           f"{err.read_text()[-500:].strip()}")

    def _inject_nfqueue(self, env: Env, shell: Shell, is_node: bool, peer: str | None) -> None:
        if not isinstance(env, LocalNamespaces):
            raise Unsupported(f"{NAME}: backend: nfqueue runs its agent on the local lab only; "
                              f"this env needs netem (backend=netem)")
        self._start_agent(env, shell)
        self.chain.create(shell, self.nfqueue_rules(peer), self.nfqueue_hooks(is_node))

    # the netem backend -------------------------------------------------------------------
    def netem_commands(self, peer: str | None) -> list[list[str]]:
        """Every ``tc``/``ip`` command of the netem backend, in order."""
        dev, cmds = "eth0", []
        if self.direction in ("egress", "both"):
            cmds += self._qdisc_on(dev, peer, "dst")
        if self.direction in ("ingress", "both"):
            cmds += [*ifb_redirect(dev, self.ifb), *self._qdisc_on(self.ifb, peer, "src")]
        return cmds

    def _qdisc_on(self, dev: str, peer: str | None, side: str) -> list[list[str]]:
        return filtered_root(dev, "1:", ["netem", *self.netem_args()], peer, self.peer_port,
                             side)

    def _inject_netem(self, shell: Shell, peer: str | None) -> None:
        for cmd in self.netem_commands(peer):
            shell.run(cmd)

    # protocol ----------------------------------------------------------------------------
    def inject(self, env: Env) -> str:
        """Install the fault with the chosen backend (see the module docstring).

        Raises:
            ConfigError: an unknown target or peer, or nfqueue asked for off the local lab.
            LabError: the agent did not start.
            CommandError: a tc/iptables command failed (the caller reverts what was done).
        """
        shell, is_node, peer = self._where(env)
        if self.backend in ("auto", "netem") and not is_node:
            try:
                self._inject_netem(shell, peer)
                self.backend_used = "netem"
            except CommandError as exc:
                unknown = "unknown" in (exc.stderr or "").lower()
                self._revert_netem(shell)
                if self.backend == "netem" or not unknown:
                    raise
        if self.backend_used is None:
            self._inject_nfqueue(env, shell, is_node, peer)
            self.backend_used = "nfqueue"
        what = " ".join(self.netem_args())
        queue = f" queue {self.queue}" if self.backend_used == "nfqueue" else ""
        return (f"{shell.name}: {self.direction} {what}"
                f"{f' with {peer}' if peer else ''}"
                f"{f' port {self.peer_port}' if self.peer_port else ''} "
                f"({self.backend_used}{queue})")

    def _revert_netem(self, shell: Shell) -> list[str]:
        done = []
        if listing_shows(shell, ["tc", "qdisc", "show", "dev", "eth0", "root"],
                         lambda root: "qdisc netem 1:" in root or "qdisc htb 1:" in root,
                         made=self.direction != "ingress"):
            shell.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
            done.append("root qdisc")
        if remove_ifb_redirect(shell, "eth0", self.ifb, made=self.direction != "egress"):
            done.append(self.ifb)
        return done

    def _stop_agents(self, shell: Shell) -> list[str]:
        pids = self._agent_pids(shell)
        for pid in pids:
            shell.run(["kill", f"-{int(signal.SIGTERM)}", str(pid)], check=False)
        try:
            wait_until(lambda: not self._agent_pids(shell), timeout_s=5, what="agent exit")
        except PollTimeout:
            for pid in self._agent_pids(shell):
                shell.run(["kill", "-9", str(pid)], check=False)
        return [f"agent {p}" for p in pids]

    def revert(self, env: Env) -> str:
        """Remove this fault's rules and agent, or its qdiscs (idempotent)."""
        shell = target_shell(env, self.target, NAME)
        done: list[Any] = []
        if self.backend_used != "netem":
            done.append(self.chain.remove(shell))  # rules first: no packet waits on a dead queue
            done += self._stop_agents(shell)
        if self.backend_used != "nfqueue":
            done += self._revert_netem(shell)
        return f"{shell.name}: " + ("; ".join(str(d) for d in done if d) or "nothing")
