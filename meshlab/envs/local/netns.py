"""Network-namespace primitives and the local :class:`~meshlab.envs.base.Shell` transport.

Every command that touches the lab goes through ``ip -n <ns> …`` or ``ip netns exec <ns> …``,
so nothing is ever configured in the host's own network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from meshlab.envs.base import CommandResult, run_argv
from meshlab.errors import LabError

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")


class NetnsShell:
    """Runs argv inside a named network namespace (``ip netns exec``).

    ``ip netns exec`` also bind-mounts ``/etc/netns/<ns>/*`` over ``/etc`` for the command, so
    each pod resolves Service names through its own ``hosts`` file.

    Args:
        netns: the namespace name, e.g. ``ml-lab-p-netshoot-0``.
        name: a readable name for journals and errors (e.g. the pod name).
    """

    def __init__(self, netns: str, name: str | None = None) -> None:
        self.netns = netns
        self.name = name or netns

    def __repr__(self) -> str:
        return f"NetnsShell(netns={self.netns!r}, name={self.name!r})"

    def prefix(self, user: str | None = None) -> list[str]:
        """The argv prefix that enters the namespace (and drops to ``uid[:gid]`` if given)."""
        argv = ["ip", "netns", "exec", self.netns]
        if user:
            uid, _, gid = user.partition(":")
            argv += ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]
        return argv

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Run ``argv`` in the namespace to completion (see :meth:`Shell.run`)."""
        return run_argv(self.prefix() + list(argv), check=check, timeout_s=timeout_s,
                        input_text=input_text)

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None, env: dict[str, str] | None = None,
              wrap: Callable[[list[str]], list[str]] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace, detached in its own session (survives the caller).

        Args:
            argv: command and arguments.
            stdout: file appended with standard output (None: discarded).
            stderr: file appended with standard error (None: discarded).
            user: ``uid[:gid]`` to run as.
            env: extra environment variables.
            wrap: turns the whole command line, namespace entry included, into the one to run
                — for steps that must come before ``ip netns exec`` (which mounts a fresh
                ``/sys`` without the cgroup hierarchies), e.g. entering a container cgroup.

        Raises:
            LabError: the command could not be started.
        """
        with ExitStack() as files:  # the child keeps its own copies of the descriptors
            out = files.enter_context(open(stdout, "ab")) if stdout else subprocess.DEVNULL
            err = files.enter_context(open(stderr, "ab")) if stderr else subprocess.DEVNULL
            try:
                full = self.prefix(user) + list(argv)
                return subprocess.Popen(wrap(full) if wrap else full, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, **(env or {})})
            except OSError as exc:
                raise LabError(f"cannot start {argv[0]} in {self.netns}: {exc}") from exc


def list_netns() -> list[str]:
    """Names of all named network namespaces on the machine."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir())


def add_netns(name: str, parent: str | None = None) -> None:
    """Create a named netns with loopback up.

    Args:
        name: the new namespace's name (``/run/netns/<name>``).
        parent: a lab netns to create it from (``nsenter --net`` only: the bind mount still
            lands in the host's mount namespace). Per-netns settings that apply to namespaces
            created from a netns, such as ``net.ipv4.tcp_child_ehash_entries``, then come from
            that lab netns, never from the host's.

    Raises:
        LabError / CommandError: the namespace exists already or cannot be created.
    """
    prefix = ["nsenter", f"--net=/run/netns/{parent}"] if parent else []
    run_argv([*prefix, "ip", "netns", "add", name])
    run_argv(["ip", "-n", name, "link", "set", "lo", "up"])


def netns_pids(name: str) -> list[int]:
    """PIDs of processes whose network namespace is ``name``."""
    res = run_argv(["ip", "netns", "pids", name], check=False)
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def kill_pids(pids: list[int], grace_s: float = 2.0,
              first: signal.Signals = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM; SIGKILL for a power loss), wait up to ``grace_s`` for exit,
    then SIGKILL what is left."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, first)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if process_alive(p)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_exit(pid: int) -> tuple[bool, int | None]:
    """``(gone, exit status)`` of ``pid``: a child of ours that exited is reaped and its status
    read (``128 + signal`` for a signal); any other process is gone once ``/proc/<pid>`` is gone
    or it is a zombie (state ``Z``), its status unknown (None)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (e.g. started by another runner)
        try:
            return ") Z " in Path(f"/proc/{pid}/stat").read_text(), None
        except OSError:
            return True, None
    if done == 0:
        return False, None
    return True, (128 + os.WTERMSIG(status) if os.WIFSIGNALED(status)
                  else os.WEXITSTATUS(status))


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (:func:`process_exit`)."""
    return not process_exit(pid)[0]


_holders: dict[str, dict[int, Callable[[], None]]] = {}
_holders_lock = threading.Lock()


def hold_netns(name: str, release: Callable[[], None]) -> Callable[[], None]:
    """Register ``release`` as closing something of this process that pins netns ``name``.

    A socket keeps the namespace it was created in alive after ``ip netns del`` (with its
    devices: a node's uplink veth would stay on the underlay bridge), so long-lived sockets
    (the collectors' netlink readers) register here and :func:`delete_netns` closes them first.

    Returns:
        A function that removes the registration (idempotent), for when the holder closes.
    """
    key = id(release)
    with _holders_lock:
        _holders.setdefault(name, {})[key] = release

    def unhold() -> None:
        with _holders_lock:
            held = _holders.get(name, {})
            held.pop(key, None)
            if not held:
                _holders.pop(name, None)

    return unhold


def release_netns_holders(name: str) -> int:
    """Call every ``release`` registered for netns ``name`` (errors ignored).

    Returns:
        How many were called.
    """
    with _holders_lock:
        releases = list(_holders.pop(name, {}).values())
    for release in releases:
        try:
            release()
        except Exception:  # noqa: BLE001, S110 - best effort: the namespace goes anyway
            pass
    return len(releases)


def delete_netns(name: str) -> None:
    """Kill every process in netns ``name``, delete it and its ``/etc/netns`` folder; sockets
    of this process that pin it (:func:`hold_netns`) are closed first.

    Idempotent: a missing namespace is not an error.
    """
    release_netns_holders(name)
    if (NETNS_DIR / name).exists():
        for _ in range(3):  # processes may fork while being killed
            pids = netns_pids(name)
            if not pids:
                break
            kill_pids(pids)
        run_argv(["ip", "netns", "del", name], check=False)
    etc = ETC_NETNS / name
    if etc.is_dir():
        for f in etc.iterdir():
            f.unlink()
        etc.rmdir()


def write_etc_netns(name: str, files: dict[str, str]) -> None:
    """Write per-namespace ``/etc`` overrides (e.g. ``hosts``, ``resolv.conf``) for ``name``."""
    etc = ETC_NETNS / name
    etc.mkdir(parents=True, exist_ok=True)
    for fname, text in files.items():
        (etc / fname).write_text(text)
