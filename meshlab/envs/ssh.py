"""Cluster nodes over SSH (paramiko): a ``NodeDriver`` for power faults and a ``Shell`` transport.

:class:`SshNodeDriver` powers a node off by running ``power_off_command`` ON the node over SSH
(default: the magic SysRq ``o``, an immediate power-off without sync, like pulling the plug) and
powers it on by running ``power_on_command`` on the RUNNER (a powered-off node cannot switch
itself on: ``ipmitool``, ``virsh start``, a cloud CLI). :class:`SshShell` runs a fault's or
collector's argv on a node, so the same command builder serves the local lab (``ip netns exec``)
and a cluster (SSH) (DESIGN.md §1).

Host keys are checked by default like OpenSSH's ``StrictHostKeyChecking yes``: the known_hosts
file is loaded and paramiko's ``RejectPolicy`` refuses unknown keys; a changed key is always
refused. paramiko exceptions are translated to :mod:`meshlab.errors` here, at the boundary. The
configuration lives in :mod:`meshlab.envs.ssh_config`.
See ``docs/NODE_DRIVERS.md`` for configuring a real cluster.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any, Self

import paramiko

from meshlab.envs.base import CommandResult, run_argv
from meshlab.envs.ssh_config import (
    DEFAULT_POWER_OFF,
    AcceptUnknownHost,
    RejectUnknownHost,
    SocketFactory,
    SshConfig,
)
from meshlab.errors import CommandError, ConfigError, LabError

__all__ = ["DEFAULT_POWER_OFF", "SocketFactory", "SshConfig", "SshNodeDriver", "SshShell"]

log = logging.getLogger(__name__)


def _collect(chan: paramiko.Channel, deadline: float) -> tuple[bytes, bytes, int | None]:
    """Read a channel's stdout and stderr until its exit status arrives, it closes or ``deadline``.

    Returns:
        ``(stdout, stderr, exit_status)``; exit_status is None when the deadline passed or the
        channel closed without one (the node went away).
    """
    out, err = bytearray(), bytearray()
    while True:
        # Look before draining: the server sends all data before exit-status (RFC 4254 §6.10)
        # and paramiko's transport thread feeds messages in order, so once the status is seen
        # every byte is already buffered and the drain below gets it. ``gone`` is read first:
        # a channel closed after its exit-status then always shows the status.
        gone = chan.closed or not chan.get_transport().is_active()
        has_status = chan.status_event.is_set()
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        if has_status:
            return bytes(out), bytes(err), chan.recv_exit_status()
        if gone:
            return bytes(out), bytes(err), None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(out), bytes(err), None
        select.select([chan], [], [], min(remaining, 0.1))


class SshNodeDriver:
    """Powers cluster nodes off/on and runs commands on them over SSH (a ``NodeDriver``).

    One SSH connection per node is opened on first use and reused; :meth:`close` (or ``with``)
    closes them.

    Args:
        config: the :class:`SshConfig`.

    Raises:
        ConfigError: the key file is missing, or known_hosts is missing while strict checking is on.
    """

    def __init__(self, config: SshConfig) -> None:
        self.config = config
        self.key_file = Path(os.path.expanduser(str(config.key_file)))
        self.known_hosts = Path(os.path.expanduser(str(config.known_hosts_file)))
        if not self.key_file.is_file():
            raise ConfigError(f"key_file: {self.key_file} does not exist")
        if config.strict_host_key_checking and not self.known_hosts.is_file():
            raise ConfigError(f"known_hosts_file: {self.known_hosts} does not exist; with "
                              "strict_host_key_checking every node's host key must be listed there")
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"SshNodeDriver(user={self.config.user!r}, port={self.config.port}, "
                f"nodes={sorted(self.config.nodes)}, connected={sorted(self._clients)}, "
                f"strict_host_key_checking={self.config.strict_host_key_checking})")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # connections -----------------------------------------------------------------------
    def _socket(self, host: str, timeout_s: float) -> socket.socket:
        factory = self.config.socket_factory
        try:
            if factory is not None:
                return factory(host, self.config.port, timeout_s)
            return socket.create_connection((host, self.config.port), timeout=timeout_s)
        except OSError as exc:
            raise LabError(f"cannot connect to {host}:{self.config.port}: {exc}") from exc

    def client(self, node: str) -> paramiko.SSHClient:
        """The node's connected, authenticated SSH client (reused while its transport lives).

        Raises:
            ConfigError: the node is not configured.
            LabError: unreachable, host key unknown or changed, or authentication failed.
        """
        with self._lock:
            cached = self._clients.get(node)
            if cached is not None:
                transport = cached.get_transport()
                if transport is not None and transport.is_active():
                    return cached
                self._drop(node)
            self._clients[node] = self._connect(node)
            return self._clients[node]

    def _connect(self, node: str) -> paramiko.SSHClient:
        cfg, host = self.config, self.config.host(node)
        where = f"{cfg.user}@{host}:{cfg.port} (node {node})"
        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(RejectUnknownHost(self.known_hosts)
                                           if cfg.strict_host_key_checking else AcceptUnknownHost())
        sock = self._socket(host, cfg.connect_timeout_s)
        try:
            client.connect(host, port=cfg.port, username=cfg.user, key_filename=str(self.key_file),
                           timeout=cfg.connect_timeout_s, banner_timeout=cfg.connect_timeout_s,
                           auth_timeout=cfg.connect_timeout_s, sock=sock, look_for_keys=False,
                           allow_agent=False)
        except LabError:
            client.close()
            sock.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            sock.close()
            raise LabError(
                f"host key of {where} CHANGED: got {exc.key.get_name()} {exc.key.fingerprint}, "
                f"known_hosts file {self.known_hosts} has {exc.expected_key.fingerprint}; if the "
                "node was reinstalled, verify the new key and replace the entry (`ssh-keygen -R "
                f"{cfg.known_hosts_name(node)} -f {self.known_hosts}`), otherwise suspect a "
                "man-in-the-middle") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            sock.close()
            raise LabError(f"SSH authentication failed for {where} with key_file {self.key_file}: "
                           f"{exc}; add its public key to the node's authorized_keys") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            sock.close()
            raise LabError(f"SSH connection to {where} failed: {exc}") from exc
        return client

    def _drop(self, node: str) -> None:
        client = self._clients.pop(node, None)
        if client is not None:
            client.close()  # no packet is sent: safe on a dead link

    def close(self) -> None:
        """Close every SSH connection (idempotent)."""
        with self._lock:
            for node in list(self._clients):
                self._drop(node)

    def shell(self, node: str) -> SshShell:
        """A :class:`SshShell` running argv on ``node``."""
        self.config.host(node)
        return SshShell(self, node)

    # NodeDriver ------------------------------------------------------------------------
    def power_off(self, node: str) -> str:
        """Run ``power_off_command`` on ``node`` and wait until it stops answering.

        A fresh connection is used (a stale cached one could swallow the command). The command
        usually kills the node before its exit status can come back: after
        ``power_off_wait_s`` without an answer, the connection is dropped and the node polled.

        Returns:
            What happened, for the journal (a no-op when the node is already off).

        Raises:
            ConfigError: unknown node.
            LabError: the node could not be reached to send the command, or still answers
                ``power_off_timeout_s`` after it.
            CommandError: the command answered with a non-zero exit (the node stays up).
        """
        cfg = self.config
        argv = cfg.command(cfg.power_off_command, node)
        if not self.is_up(node):
            return f"{node}: already off (sshd not answering), nothing done"
        start = time.monotonic()
        with self._lock:
            self._drop(node)
        client = self.client(node)
        try:
            chan = client.get_transport().open_session(timeout=cfg.connect_timeout_s)
            chan.exec_command(shlex.join(argv))
            chan.shutdown_write()
            out, err, status = _collect(chan, time.monotonic() + cfg.power_off_wait_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.info("power-off of %s: connection lost (%s)", node, exc)
            status, out, err = None, b"", b""
        finally:
            with self._lock:
                self._drop(node)
        if status is not None and status != 0:
            raise CommandError(argv, status, out.decode(errors="replace"),
                               err.decode(errors="replace"))
        answer = "no exit status (connection died)" if status is None else "exit 0"
        try:
            self.wait_for(node, up=False, timeout_s=cfg.power_off_timeout_s)
        except LabError as exc:
            raise LabError(f"{node} still answers SSH {cfg.power_off_timeout_s:g} s after "
                           f"{shlex.join(argv)} ({answer}); check power_off_command") from exc
        return (f"{node}: ran {shlex.join(argv)}: {answer}; not answering after "
                f"{time.monotonic() - start:.1f} s")

    def power_on(self, node: str) -> str:
        """Run ``power_on_command`` for ``node`` on the runner (no-op when the node is up).

        It does not wait for the node to boot: poll :meth:`is_up` or use :meth:`wait_for`.

        Raises:
            ConfigError: unknown node, or no ``power_on_command`` is configured.
            CommandError / LabError: the command failed or timed out.
        """
        if self.config.power_on_command is None:
            raise ConfigError("power_on_command: not configured; a powered-off node cannot power "
                              "itself on, set a runner-side command (ipmitool, virsh, cloud CLI)")
        argv = self.config.command(self.config.power_on_command, node)
        if self.is_up(node):
            return f"{node}: already up (sshd answers), nothing done"
        res = run_argv(argv, timeout_s=self.config.power_on_timeout_s)
        return f"{node}: {shlex.join(argv)} exited 0 in {res.duration_s:.1f} s"

    def is_up(self, node: str) -> bool:
        """True when ``node``'s sshd accepts a TCP connection and sends its SSH banner within
        ``is_up_timeout_s`` (no login, no host-key check)."""
        timeout_s = self.config.is_up_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            sock = self._socket(self.config.host(node), timeout_s)
        except LabError:
            return False
        try:
            banner = b""
            while not banner.startswith(b"SSH-") and len(banner) < 4:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                sock.settimeout(remaining)
                chunk = sock.recv(256)
                if not chunk:
                    return False
                banner += chunk
            return banner.startswith(b"SSH-")
        except OSError:
            return False
        finally:
            sock.close()

    def wait_for(self, node: str, *, up: bool, timeout_s: float) -> float:
        """Poll :meth:`is_up` until it equals ``up``.

        Returns:
            Seconds it took.

        Raises:
            LabError: not reached within ``timeout_s``.
        """
        start = time.monotonic()
        while self.is_up(node) != up:
            if time.monotonic() - start > timeout_s:
                state = "up" if up else "down"
                raise LabError(f"node {node} not {state} after {timeout_s:g} s")
            time.sleep(0.05)
        return time.monotonic() - start


class SshShell:
    """Runs argv on a cluster node over SSH (implements :class:`meshlab.envs.base.Shell`).

    argv is quoted with ``shlex.join`` for the remote login shell, so it runs as given.

    Args:
        driver: the :class:`SshNodeDriver` owning the connection.
        node: node name.
    """

    def __init__(self, driver: SshNodeDriver, node: str) -> None:
        self.driver = driver
        self.node = node
        self.name = node

    def __repr__(self) -> str:
        return f"SshShell(node={self.node!r}, host={self.driver.config.host(self.node)!r})"

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Run ``argv`` on the node (see :meth:`Shell.run`).

        On timeout the channel is closed; the remote process gets SIGPIPE on its next write
        (there is no PTY to hang up).

        Raises:
            CommandError: ``check`` and the command exited non-zero.
            LabError: the node is unreachable, the connection broke, or ``timeout_s`` passed.
        """
        cfg = self.driver.config
        shown = ["ssh", f"{cfg.user}@{cfg.host(self.node)}", *argv]
        start = time.monotonic()
        client = self.driver.client(self.node)
        try:
            chan = client.get_transport().open_session(timeout=cfg.connect_timeout_s)
            try:
                chan.exec_command(shlex.join(argv))
                if input_text:
                    chan.sendall(input_text.encode())
                chan.shutdown_write()
                out, err, status = _collect(chan, start + timeout_s)
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise LabError(f"SSH command on {self.node} failed: {shlex.join(argv)}: {exc}") from exc
        if status is None:
            if time.monotonic() - start >= timeout_s:
                raise LabError(f"command timed out after {timeout_s:g} s on {self.node}: "
                               f"{shlex.join(argv)}")
            raise LabError(f"connection to {self.node} closed before {shlex.join(argv)} finished")
        result = CommandResult(argv=shown, returncode=status, stdout=out.decode(errors="replace"),
                               stderr=err.decode(errors="replace"),
                               duration_s=time.monotonic() - start)
        if check and status != 0:
            raise CommandError(shown, status, result.stdout[-2000:], result.stderr[-2000:])
        return result

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> Any:
        """Not supported over SSH.

        Raises:
            LabError: always; run bounded commands with :meth:`run` instead.
        """
        raise LabError(f"SshShell.popen is not implemented (node {self.node}): background "
                       "processes over SSH are not supported; use run() with a bounded command")
