"""``half-close``: the upstream half-closes a proxied TCP session while conntrack is time-scaled,
so the app's late FIN is lost and the sidecar leaks a FIN-WAIT-2 / CLOSE-WAIT pair
(DESIGN.md §5.3; book: "TCP Proxy half-closed connection leak for 1 hour").

What happens (hop: the app ↔ its own sidecar, inside the ``target`` pod, on the outbound
TCP-proxy path ``app → 15001 → upstream``):

1. The upstream (``upstream`` pod, e.g. ``tcp-echo``) sends FIN. The target's sidecar TCP proxy
   forwards it to the app as ``shutdown(SHUT_WR)`` (Envoy ``enableHalfClose(true)``,
   ``RawBufferSocket::doWrite`` with ``end_stream``): its socket toward the app goes to
   FIN-WAIT-2 and its socket toward the upstream stays in CLOSE-WAIT. An owned FIN-WAIT-2
   socket has no kernel timer (``tcp_fin_timeout`` only applies to orphans) and Envoy has no
   half-close timer: only the TCP proxy ``idle_timeout`` (1 h by default) ends the session.
2. The app's connection was captured by ``iptables -t nat … REDIRECT --to-ports 15001``; its
   conntrack entry sees the sidecar's FIN and the app's ACK and enters CLOSE_WAIT, which expires
   after ``net.netfilter.nf_conntrack_tcp_timeout_close_wait`` (60 s; this fault scales it to
   ``close_wait_timeout_s`` in the target pod's netns).
3. The app closes later than that. Its FIN matches no conntrack entry; a FIN cannot create one
   (``nf_conntrack_proto_tcp.c``: ``sNO`` + FIN → ``sIV``), so it is INVALID, is not un-NATed
   to 127.0.0.1:15001 and never reaches the sidecar. The app's socket retransmits FIN in
   LAST-ACK; the sidecar keeps both sockets.

Inject: save the target netns's ``nf_conntrack_tcp_timeout_close_wait`` in :attr:`saved`, set
it to ``close_wait_timeout_s``, then send ``SIGUSR1`` to the upstream app
(:mod:`meshlab.apps.tcp_echo` half-closes every open connection on it). The process is found
from *inside* the upstream pod (a process sharing the shell's network namespace whose command
line contains ``app_match``), so the same argv works through any Shell. Revert: write the saved
sysctl back exactly. The FIN itself cannot be undone, and sockets that already leaked stay
leaked (that is the finding); only the time scaling is reverted.

Local lab: both steps run through ``env.pod_shell`` (``ip netns exec``; conntrack timeouts are
per-netns sysctls). Cluster: the same argv runs in the target pod through a privileged debug
container (``net.netfilter.*`` needs NET_ADMIN in the pod's netns) and in the upstream pod's app
container (its ``/proc`` shows the pod's processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshlab.envs.base import Env
from meshlab.errors import ConfigError, LabError

CLOSE_WAIT_SYSCTL = "net.netfilter.nf_conntrack_tcp_timeout_close_wait"

#: POSIX sh run inside a pod: signal every process in this network namespace whose command
#: line contains $2 (not this shell itself), print the PIDs signalled.
SIGNAL_APP_SCRIPT = r"""
self=$(readlink /proc/self/ns/net)
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$$" ] && continue
  [ "$(readlink "$d/ns/net" 2>/dev/null)" = "$self" ] || continue
  case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
    *"$2"*) kill -s "$1" "$pid" 2>/dev/null && echo "$pid" ;;
  esac
done
"""


def signal_app(shell: Any, match: str, signame: str = "USR1") -> list[int]:
    """Send ``signame`` to the processes in ``shell``'s network namespace whose command line
    contains ``match``.

    Args:
        shell: a :class:`~meshlab.envs.base.Shell` of the pod (its netns).
        match: a command-line substring, e.g. ``"meshlab.apps.tcp_echo"``.
        signame: signal name without ``SIG``.

    Returns:
        The PIDs signalled (as seen by the shell).

    Raises:
        LabError: the script could not run.
    """
    res = shell.run(["sh", "-c", SIGNAL_APP_SCRIPT, "signal-app", signame, match],
                    check=False, timeout_s=20)
    if res.returncode != 0:
        raise LabError(f"{shell.name}: signalling {match!r} failed: {res.stderr.strip()}")
    return [int(x) for x in res.stdout.split() if x.isdigit()]


@dataclass
class HalfClose:
    """Make ``upstream`` half-close its TCP connections with the target's CLOSE_WAIT scaled down.

    Args:
        target: the pod whose sidecar proxies the TCP connection (the app's pod, e.g. L1
            ``fortio-server``).
        upstream: the TCP server pod or workload (e.g. ``tcp-echo``).
        close_wait_timeout_s: conntrack CLOSE_WAIT timeout set in the target netns (kernel
            default 60 s), >= 1.
        app_match: command-line substring that finds the upstream app process.
        signame: signal that makes the app send FIN (``tcp_echo``: ``USR1``).
        max_duration_s: deadman deadline for the time scaling.
        saved: filled by inject: ``{sysctl: old value}`` (what revert writes back).
        signalled: filled by inject: the PIDs signalled.
    """

    target: str
    upstream: str
    close_wait_timeout_s: int = 5
    app_match: str = "meshlab.apps.tcp_echo"
    signame: str = "USR1"
    max_duration_s: float = 300.0
    saved: dict[str, str] = field(default_factory=dict)
    signalled: list[int] = field(default_factory=list)
    name = "half-close"

    def __post_init__(self) -> None:
        if isinstance(self.close_wait_timeout_s, bool) or not isinstance(
                self.close_wait_timeout_s, int) or self.close_wait_timeout_s < 1:
            raise ConfigError(f"half-close: close_wait_timeout_s must be an integer >= 1, "
                              f"got {self.close_wait_timeout_s!r}")
        if not self.app_match.strip():
            raise ConfigError("half-close: app_match must not be empty")

    def inject(self, env: Env) -> str:
        """Scale CLOSE_WAIT in the target netns (saving the old value once), then signal the
        upstream app.

        A dry run's shell (``dry_run``) reads nothing: the value saved is the placeholder
        ``<value read by sysctl -n>`` (its revert prints it so) and no process is found.

        Raises:
            LabError: the sysctl is missing (no conntrack in the netns) or no app process found.
        """
        shell = env.pod_shell(self.target)
        dry = getattr(shell, "dry_run", False)
        if CLOSE_WAIT_SYSCTL not in self.saved:  # a second inject must not save the scaled value
            res = shell.run(["sysctl", "-n", CLOSE_WAIT_SYSCTL], check=False)
            if res.returncode != 0:
                raise LabError(f"{shell.name}: cannot read {CLOSE_WAIT_SYSCTL} (is nf_conntrack "
                               f"loaded?): {res.stderr.strip()}")
            self.saved[CLOSE_WAIT_SYSCTL] = res.stdout.strip() if not dry else \
                "<value read by sysctl -n>"
        shell.run(["sysctl", "-w", f"{CLOSE_WAIT_SYSCTL}={self.close_wait_timeout_s}"])
        up = env.pod_shell(self.upstream)
        self.signalled = signal_app(up, self.app_match, self.signame)
        if not self.signalled and not dry:
            raise LabError(f"{up.name}: no process matching {self.app_match!r} to signal")
        return (f"{shell.name}: {CLOSE_WAIT_SYSCTL} {self.saved[CLOSE_WAIT_SYSCTL]} -> "
                f"{self.close_wait_timeout_s}; {up.name}: SIG{self.signame} to "
                f"{', '.join(map(str, self.signalled))} (upstream FIN)")

    def revert(self, env: Env) -> str:
        """Write the saved sysctl values back (idempotent; nothing saved → nothing to do)."""
        if not self.saved:
            return f"{self.target}: nothing to restore"
        shell = env.pod_shell(self.target)
        for key, value in self.saved.items():
            shell.run(["sysctl", "-w", f"{key}={value}"])
        return f"{shell.name}: restored " + ", ".join(f"{k}={v}" for k, v in self.saved.items())
