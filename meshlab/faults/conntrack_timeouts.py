"""``conntrack-timeouts``: make conntrack forget flows sooner (DESIGN.md §3, §5.3).

Sets ``net.netfilter.nf_conntrack_tcp_timeout_<key>`` (seconds) in one network namespace
(``target``: a pod or a node, :mod:`meshlab.faults.targets`), e.g. ``{"close_wait": 5}``
instead of the kernel's 60 s, so a half-closed flow's entry expires in seconds (time scaling).
The old values are kept in ``saved`` (a dataclass field, so the deadman's fresh instance
restores them exactly). Conntrack sysctls are per-netns since Linux 4.x and a new netns starts
from the kernel defaults; on a cluster node (``nsenter -t 1 -n``) kube-proxy sets its own
close-wait/established timeouts, and revert restores whatever was there. Deleting entries at
once instead is :mod:`meshlab.faults.conntrack_delete`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshlab.envs.base import Env
from meshlab.errors import ConfigError
from meshlab.faults.targets import param_error, require_target, target_shell

# net.netfilter.nf_conntrack_tcp_timeout_<key> (Documentation/networking/nf_conntrack-sysctl)
TIMEOUT_KEYS = ("syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
                "time_wait", "close", "max_retrans", "unacknowledged")
SYSCTL_PREFIX = "net.netfilter.nf_conntrack_tcp_timeout_"


@dataclass
class ConntrackTimeouts:
    """Shorten (or lengthen) TCP conntrack timeouts in one netns until revert.

    Args:
        target: pod/workload or node name.
        timeouts: ``{key: seconds}``, key one of :data:`TIMEOUT_KEYS`, seconds >= 1.
        saved: filled by inject: ``{sysctl: old value}``; used by revert.

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    target: str
    timeouts: dict[str, int] = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)
    name = "conntrack-timeouts"

    def __post_init__(self) -> None:
        def bad(fld: str, why: str) -> ConfigError:
            return param_error(self.name, fld, why)

        require_target(self.name, self.target)
        if not self.timeouts or not isinstance(self.timeouts, dict):
            raise bad("timeouts", "needs {key: seconds}, e.g. {'close_wait': 5}")
        for key, seconds in self.timeouts.items():
            if key not in TIMEOUT_KEYS:
                raise bad("timeouts", f"unknown key {key!r} (known: {', '.join(TIMEOUT_KEYS)})")
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
                raise bad("timeouts", f"{key}: {seconds!r} is not a whole number of seconds >= 1")

    def inject(self, env: Env) -> str:
        """Set the timeouts (a second inject keeps the values saved by the first).

        Raises:
            LabError: ``sysctl`` failed.
        """
        shell = target_shell(env, self.target, self.name)
        keys = [SYSCTL_PREFIX + k for k in self.timeouts]
        for key in keys:  # save every old value before changing any
            if key not in self.saved:
                self.saved[key] = shell.run(["sysctl", "-n", key]).stdout.strip()
        for key, seconds in self.timeouts.items():
            shell.run(["sysctl", "-qw", f"{SYSCTL_PREFIX}{key}={seconds}"])
        shown = ", ".join(f"{k}={v}s (was {self.saved[SYSCTL_PREFIX + k]})"
                          for k, v in self.timeouts.items())
        return f"{shell.name}: conntrack tcp timeouts {shown}"

    def revert(self, env: Env) -> str:
        """Restore the saved timeouts exactly (idempotent)."""
        if not self.saved:
            return "nothing to revert: no timeout was changed"
        shell = target_shell(env, self.target, self.name)
        for key, value in list(self.saved.items()):
            shell.run(["sysctl", "-qw", f"{key}={value}"])
            del self.saved[key]
        return f"{shell.name}: conntrack tcp timeouts restored"
