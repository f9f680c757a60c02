"""A fault's own iptables chain in one netns: created with its rules, hooked into built-in
chains, removed by comment (``packet-drop``, ``network-partition``).

Every rule a fault adds carries ``-m comment --comment meshlab:<fault>:<id>``, so the revert
deletes exactly that fault's rules — also from a fresh instance built from the ledger, as the
deadman does — and never another fault's or kube-proxy's. The chain is named
``MESHLAB-<tag>-<id>`` (iptables chain names are at most 28 characters).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from meshlab.envs.base import Shell

#: Built-in chains a fault may hook into: a pod's INPUT/OUTPUT, a node's INPUT/FORWARD.
HOOKS = ("INPUT", "OUTPUT", "FORWARD")


@dataclass(frozen=True)
class FaultChain:
    """One fault's chain.

    Attributes:
        chain: the chain's name, e.g. ``MESHLAB-PD-3fa2c1``.
        comment: the comment on every rule, e.g. ``meshlab:packet-drop:3fa2c1``.
    """

    chain: str
    comment: str

    @property
    def tag(self) -> list[str]:
        """``-m comment --comment <comment>``, for a rule's argv."""
        return ["-m", "comment", "--comment", self.comment]

    def exists(self, shell: Shell) -> bool:
        """Whether the chain exists in the shell's netns (``iptables -S`` prints its ``-N``
        line; a dry run's shell prints nothing, so it reports a clean netns)."""
        res = shell.run(["iptables", "-S", self.chain], check=False)
        return res.ok and f"-N {self.chain}" in res.stdout

    def create(self, shell: Shell, rules: list[list[str]], hooks: list[list[str]]) -> bool:
        """Create the chain with ``rules`` (argv after ``iptables -A <chain>``), then insert
        ``hooks`` (``[builtin, match…]``, each jumping to the chain) at position 1.

        Returns:
            False when the chain already existed (nothing done: a second inject is a no-op).

        Raises:
            CommandError: an iptables command failed.
        """
        if self.exists(shell):
            return False
        shell.run(["iptables", "-N", self.chain])
        for rule in rules:
            shell.run(["iptables", "-A", self.chain, *rule])
        for hook in hooks:
            shell.run(["iptables", "-I", hook[0], "1", *hook[1:], *self.tag, "-j", self.chain])
        return True

    def remove(self, shell: Shell, hooks: Sequence[list[str]] = ()) -> str:
        """Delete every hook rule carrying the comment, then the chain (idempotent).

        Args:
            shell: where the chain is.
            hooks: the hooks :meth:`create` inserts for this fault (``[builtin, match…]``); a
                dry run's shell (``shell.dry_run``) lists nothing, so their deletes are printed
                as they would run. A real run finds the rules by their comment instead.

        Returns:
            One line: what was removed in which netns.
        """
        removed = 0
        for hook in HOOKS:
            res = shell.run(["iptables", "-S", hook], check=False)
            for line in res.stdout.splitlines() if res.ok else []:
                args = shlex.split(line)
                if args[:2] == ["-A", hook] and self.comment in args:
                    shell.run(["iptables", "-D", *args[1:]])
                    removed += 1
        if getattr(shell, "dry_run", False):
            for hook in hooks:
                shell.run(["iptables", "-D", hook[0], *hook[1:], *self.tag, "-j", self.chain],
                          check=False)
                removed += 1
        # flush and delete without asking first (an absent chain just fails), so a dry run
        # prints the removal too
        shell.run(["iptables", "-F", self.chain], check=False)
        if shell.run(["iptables", "-X", self.chain], check=False).ok:
            return f"{shell.name}: removed {removed} hook rule(s) and chain {self.chain}"
        return f"{shell.name}: removed {removed} hook rule(s); no chain {self.chain}"
