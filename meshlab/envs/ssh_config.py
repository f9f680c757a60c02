"""Configuration of the SSH node driver (:mod:`meshlab.envs.ssh`) and its host-key policies.

:class:`SshConfig` is validated on construction (ConfigError naming the field), before any
connection is made. Host keys follow OpenSSH's ``StrictHostKeyChecking``: ``yes`` (default) is
paramiko's ``RejectPolicy`` with the known_hosts file loaded; ``no`` accepts, but never saves, an
unknown key. A key that differs from known_hosts is refused either way (paramiko raises
``BadHostKeyException`` before any policy is asked).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from meshlab.errors import ConfigError, LabError

log = logging.getLogger(__name__)

SocketFactory = Callable[[str, int, float], socket.socket]
"""``(host, port, timeout_s) -> connected socket``; e.g. a lab netns connector."""

DEFAULT_POWER_OFF = ["sh", "-c", "echo o > /proc/sysrq-trigger"]
_PLACEHOLDERS = {"node": "n", "host": "h"}


def _check_argv(name: str, argv: Any) -> None:
    """ConfigError unless ``argv`` is a non-empty list of strings with only known placeholders."""
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"{name}: must be a non-empty list of strings (an argv), got {argv!r}")
    for arg in argv:
        try:
            arg.format(**_PLACEHOLDERS)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{name}: bad placeholder in {arg!r} ({exc!r}); only {{node}} and "
                              "{host} are known, write literal braces as {{ and }}") from exc


@dataclass
class SshConfig:
    """How to reach and power-cycle cluster nodes over SSH.

    Args:
        nodes: node name → SSH host (address or DNS name), e.g. ``{"worknode5": "10.0.0.5"}``.
        key_file: private key for ``user`` (OpenSSH/PEM; no passphrase).
        user: login user; power-off needs root (or a sudo rule inside the command).
        port: sshd port on every node.
        known_hosts_file: OpenSSH known_hosts with every node's host key.
        strict_host_key_checking: refuse hosts missing from known_hosts (default); False accepts
            them with a warning. A key that differs from known_hosts is refused either way.
        connect_timeout_s: TCP connect + SSH banner + auth timeout.
        power_off_command: argv run ON the node; placeholders ``{node}``, ``{host}``.
        power_off_wait_s: how long power-off waits for the command's exit status; a node that
            dies first never sends one, which is the expected outcome, not an error.
        power_off_timeout_s: how long power-off then waits for the node to stop answering.
        power_on_command: argv run on the RUNNER (``{node}``, ``{host}``); None: power-on raises.
        power_on_timeout_s: timeout of the power-on command.
        is_up_timeout_s: timeout of the reachability probe (TCP connect + SSH banner).
        socket_factory: ``(host, port, timeout_s) -> connected socket``; None: a plain TCP
            connection from the runner (tests use :func:`meshlab.envs.local.netns_socket.netns_connect`).

    Raises:
        ConfigError: a field is invalid (the message names it).
    """

    nodes: dict[str, str]
    key_file: str | Path
    user: str = "root"
    port: int = 22
    known_hosts_file: str | Path = "~/.ssh/known_hosts"
    strict_host_key_checking: bool = True
    connect_timeout_s: float = 10.0
    power_off_command: list[str] = field(default_factory=lambda: list(DEFAULT_POWER_OFF))
    power_off_wait_s: float = 5.0
    power_off_timeout_s: float = 60.0
    power_on_command: list[str] | None = None
    power_on_timeout_s: float = 300.0
    is_up_timeout_s: float = 3.0
    socket_factory: SocketFactory | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, dict) or not self.nodes or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in self.nodes.items()):
            raise ConfigError(f"nodes: must map node names to hosts, got {self.nodes!r}")
        for name in ("key_file", "user", "known_hosts_file"):
            if not isinstance(getattr(self, name), (str, Path)) or not str(getattr(self, name)):
                raise ConfigError(f"{name}: must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise ConfigError(f"port: must be an integer 1..65535, got {self.port!r}")
        for name in ("connect_timeout_s", "power_off_wait_s", "power_off_timeout_s",
                     "power_on_timeout_s", "is_up_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name}: must be a positive number of seconds, got {value!r}")
        if not isinstance(self.strict_host_key_checking, bool):
            raise ConfigError("strict_host_key_checking: must be true or false, got "
                              f"{self.strict_host_key_checking!r}")
        _check_argv("power_off_command", self.power_off_command)
        if self.power_on_command is not None:
            _check_argv("power_on_command", self.power_on_command)
        if self.socket_factory is not None and not callable(self.socket_factory):
            raise ConfigError(f"socket_factory: must be callable, got {self.socket_factory!r}")

    def host(self, node: str) -> str:
        """The SSH host of ``node``; ConfigError naming ``nodes`` if it is not configured."""
        try:
            return self.nodes[node]
        except KeyError:
            raise ConfigError(f"nodes: no host configured for node {node!r} "
                              f"(known: {sorted(self.nodes)})") from None

    def command(self, template: list[str], node: str) -> list[str]:
        """``template`` with ``{node}`` / ``{host}`` filled in for ``node``."""
        host = self.host(node)
        return [arg.format(node=node, host=host) for arg in template]

    def known_hosts_name(self, node: str) -> str:
        """The known_hosts entry name OpenSSH and paramiko look up: ``host`` or ``[host]:port``."""
        host = self.host(node)
        return host if self.port == 22 else f"[{host}]:{self.port}"


class RejectUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising a LabError that says what to change."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise LabError(
            f"host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in known_hosts "
            f"file {self.known_hosts}; verify the fingerprint out of band, then add it (e.g. "
            f"`ssh-keyscan {_keyscan_args(hostname)} >> {self.known_hosts}`), or set "
            "strict_host_key_checking=False (not recommended)")


class AcceptUnknownHost(paramiko.MissingHostKeyPolicy):
    """strict_host_key_checking=False: accept (never save) an unknown key, with a warning."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        log.warning("accepting unknown host key of %s: %s %s", hostname, key.get_name(),
                    key.fingerprint)


def _keyscan_args(hostname: str) -> str:
    if hostname.startswith("["):
        host, _, port = hostname[1:].partition("]:")
        return f"-p {port} {host}"
    return hostname
