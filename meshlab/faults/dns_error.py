"""``dns-error``: kube-dns fails the names matching a pattern — NXDOMAIN, SERVFAIL, or no answer
(a timeout) — for a probability (Chaos Mesh DNSChaos ``patterns``, Litmus ``pod-dns-error``).

Local lab: the cluster DNS is dnsmasq at the kube-dns ClusterIP
(:mod:`meshlab.envs.local.kube_dns`), which cannot fail a share of queries; the fault puts a
small dnspython front before it for its duration (:mod:`meshlab.envs.local.dns_fault`): port 53
of the DNS host is redirected to the front, which answers matching names with the error for
``probability_pct`` % of their queries and relays everything else to dnsmasq. Every pod's
queries go through it (they all use kube-dns), except those a sidecar's DNS proxy answers
itself (``ISTIO_META_DNS_CAPTURE``: it knows the mesh's Services and never asks kube-dns for
them). Revert removes the redirect and stops the front; the deadman does it if the runner dies.

Patterns are globs over the whole name without its trailing dot (``*``, ``?``), matched
case-insensitively: ``fortio-server-l2.*`` covers ``fortio-server-l2.mark.svc.cluster.local``
and every search-path expansion a resolver with ``ndots:5`` tries.

Cluster: a Chaos Mesh DNSChaos object (:mod:`meshlab.faults.dns_chaos`; SERVFAIL at 100 %
only, refused otherwise or without the CRD, printed in a dry run).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from meshlab.envs.base import Env
from meshlab.envs.capabilities import ClusterDns
from meshlab.errors import Unsupported
from meshlab.faults import dns_chaos
from meshlab.faults.protocol import DEFAULT_MAX_DURATION_S
from meshlab.faults.targets import param_error

NAME = "dns-error"
ACTIONS = ("nxdomain", "servfail", "timeout")
_ID = re.compile(r"[0-9a-f]{1,16}")
_PATTERN = re.compile(r"[A-Za-z0-9*?._-]+")


def _patterns(value: Any) -> list[str]:
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(p, str) and _PATTERN.fullmatch(p) for p in items):
        raise param_error(NAME, "patterns", f"must be one or more DNS name globs (letters, "
                                            f"digits, '.-_*?'; a list or 'a,b'), got {value!r}")
    return items


@dataclass
class DnsError:
    """Make kube-dns fail the names matching ``patterns`` until revert.

    Args:
        patterns: DNS name globs (``*``, ``?``), a list or ``"a,b"``, e.g. ``fortio-server-l2.*``.
        action: ``nxdomain``, ``servfail`` or ``timeout`` (no answer at all).
        probability_pct: percent of the matching queries that fail, 0-100.
        max_duration_s: kube env: the DNSChaos ``duration`` (the deadman's deadline).
        fault_id: names the front and its rules (generated; kept so a fresh instance reverts
            the same ones).

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    patterns: list[str]
    action: str = "servfail"
    probability_pct: float = 100.0
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    fault_id: str = field(default_factory=lambda: secrets.token_hex(4))
    name = NAME

    def __post_init__(self) -> None:
        self.patterns = _patterns(self.patterns)
        if self.action not in ACTIONS:
            raise param_error(NAME, "action", f"must be one of {', '.join(ACTIONS)}, got "
                                              f"{self.action!r}")
        p = self.probability_pct
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100:
            raise param_error(NAME, "probability_pct", f"must be a number in 0..100, got {p!r}")
        d = self.max_duration_s
        if isinstance(d, bool) or not isinstance(d, int | float) or d <= 0:
            raise param_error(NAME, "max_duration_s", f"must be a number > 0, got {d!r}")
        if not isinstance(self.fault_id, str) or not _ID.fullmatch(self.fault_id):
            raise param_error(NAME, "fault_id", f"must be 1-16 lowercase hex digits, got "
                                                f"{self.fault_id!r}")

    def inject(self, env: Env) -> str:
        """Start failing the matching names (see the module docstring).

        Raises:
            ConfigError: an env without a cluster DNS to fault, a DNSChaos the cluster cannot
                run, or another dns-error fault active. LabError: the front did not start.
        """
        if isinstance(env, ClusterDns):
            return env.set_dns_fault(self.fault_id, self.patterns, self.action,
                                     float(self.probability_pct))
        if env.name == "kube":
            return dns_chaos.apply(env, self.fault_id, self.patterns, self.action,
                                   float(self.probability_pct), self.max_duration_s)
        raise Unsupported(f"{NAME}: the {env.name} env has no cluster DNS to fault")

    def revert(self, env: Env) -> str:
        """Stop failing them (idempotent)."""
        if isinstance(env, ClusterDns):
            return env.clear_dns_fault(self.fault_id)
        if env.name == "kube":
            return dns_chaos.delete(env, self.fault_id)
        return f"{NAME}: nothing to revert on the {env.name} env"
