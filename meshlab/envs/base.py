"""The Env and Shell protocols: the one interface suites, faults and collectors talk to.

Faults and collectors express their work as argv lists and run them through a :class:`Shell`
(local: ``ip netns exec``; kube: pod exec; node: paramiko SSH). One command builder serves every
transport, so the local lab exercises the same commands a cluster run sends (DESIGN.md §1).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from meshlab.envs.node_driver import NodeDriver
from meshlab.errors import CommandError, LabError

#: Where the runner keeps what must outlive it (lab state, the fault ledger): a tmpfs, so a
#: reboot (which also ends every lab) clears it. ``MESHLAB_STATE_ROOT`` moves it.
STATE_ROOT = Path(os.environ.get("MESHLAB_STATE_ROOT", "/run/meshlab"))


@dataclass(frozen=True)
class CommandResult:
    """What a command run through a Shell returned.

    Attributes:
        argv: the command as run (after the transport prefix was added).
        returncode: exit status.
        stdout: decoded standard output.
        stderr: decoded standard error.
        duration_s: wall time of the command in seconds.
    """

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0


@runtime_checkable
class Shell(Protocol):
    """Runs argv inside one place of the lab (a pod's netns, a node, a container).

    Implementations must not go through a shell interpreter: argv is passed as is.

    Optional attributes (a Shell without them has the default):

    - ``shares_files: bool`` (default True): the commands see this process's filesystem (a
      local netns). False (a pod exec): a file a command writes is in the pod, so the load
      driver has the runner write a pod-local file and fetches it with ``cat``.
    - ``runner_python: str | None`` (default None: ``sys.executable``): the interpreter with
      meshlab installed, as the commands see it (the load runner's).
    - ``dry_run: bool`` (default False): the commands are only printed (the kube dry run) and
      "exit 0" with no output, so a listing finds nothing; a revert that finds what to delete
      by listing prints what it would delete instead.
    """

    name: str

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Run ``argv`` to completion.

        Args:
            argv: the command and its arguments.
            check: raise :class:`~meshlab.errors.CommandError` on a non-zero exit.
            timeout_s: kill the command after this many seconds (raises LabError).
            input_text: text fed to standard input.

        Returns:
            The :class:`CommandResult`.

        Raises:
            CommandError: ``check`` is true and the command exited non-zero.
            LabError: the command timed out or could not be started.
        """
        ...

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background and return the process handle.

        Args:
            argv: the command and its arguments.
            stdout: file that receives standard output (appended), or None for /dev/null.
            stderr: file that receives standard error (appended), or None for /dev/null.
            user: run as this ``uid[:gid]`` (e.g. ``"1337:1337"`` for the sidecar).
        """
        ...


def run_argv(argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
             input_text: str | None = None) -> CommandResult:
    """Run a host-level argv (no netns prefix); the one place meshlab calls subprocess.run.

    Args:
        argv: the full command.
        check: raise on a non-zero exit.
        timeout_s: seconds before the command is killed.
        input_text: text fed to standard input.

    Returns:
        The :class:`CommandResult`.

    Raises:
        CommandError: ``check`` is true and the command exited non-zero.
        LabError: the program is missing or the command timed out.
    """
    import time

    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout_s,
                              input=input_text, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"program not found: {argv[0]} (is the set-up script run?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout_s:.0f} s: {' '.join(argv)}") from exc
    result = CommandResult(argv=list(argv), returncode=proc.returncode, stdout=proc.stdout,
                           stderr=proc.stderr, duration_s=time.monotonic() - start)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return result


@dataclass
class PodInfo:
    """A running pod as an env reports it.

    Attributes:
        name: pod name, e.g. ``fortio-server-0``.
        namespace: Kubernetes namespace, e.g. ``mark``.
        workload: owning StatefulSet/Deployment name.
        node: node the pod runs on.
        ip: pod IP.
        meshed: True when a sidecar was injected.
        labels: pod labels.
    """

    name: str
    namespace: str
    workload: str
    node: str
    ip: str
    meshed: bool
    labels: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
    """A place the lab runs: ``local`` (network namespaces) or ``kube`` (a cluster with Istio).

    Suites, faults, collectors, loads and front ends use only this protocol and the optional
    capabilities below (:class:`LocalNamespaces`, :class:`PodLogFiles`, :class:`Fingerprinting`, :class:`ManagedPrometheus`,
    :class:`LoadJobs`), never a concrete env. ``isinstance(x, Env)`` is True for a complete env;
    unit tests' partial stand-ins (a pod shell and little else) are not recorded in the fault
    ledger.

    Attributes:
        name: ``local`` or ``kube``.
        lab: the lab's name (state folder, namespace suffix, ledger key).
        kernel_reads: ``netlink`` when the lab's namespaces are on this machine (collectors read
            sockets and conntrack in-process), ``shell`` when commands must run in the pods.
        sidecar_has_tcp_stats: the sidecars have Envoy's ``tcp_stats`` transport socket
            (meshlab's do; stock istio-proxy does not, so tcp_stats are derived from ``ss``).
    """

    name: str
    lab: str
    kernel_reads: str
    sidecar_has_tcp_stats: bool

    def up(self) -> None:
        """Bring the lab up (idempotent: cleans leftovers of a dead lab first)."""
        ...

    def down(self) -> None:
        """Tear the lab down and remove everything it created (idempotent)."""
        ...

    def spec(self) -> dict[str, Any]:
        """What rebuilds this env elsewhere (:func:`meshlab.envs.factory.env_from_spec`)."""
        ...

    def status(self) -> dict[str, Any]:
        """What runs now, as found on the machine or the cluster (JSON-ready)."""
        ...

    def pods(self) -> list[PodInfo]:
        """The lab's pods."""
        ...

    def pod(self, name: str) -> PodInfo:
        """One pod by name or by workload name (first replica). Raises ConfigError if unknown."""
        ...

    def pod_shell(self, pod: str) -> Shell:
        """A Shell running commands in the pod's network namespace."""
        ...

    def node_shell(self, node: str) -> Shell:
        """A Shell running commands on (in the network namespace of) a node."""
        ...

    def node_driver(self) -> NodeDriver:
        """What powers the lab's nodes off and on (:mod:`meshlab.envs.node_driver`)."""
        ...

    def sidecar_admin(self, pod: str, path: str, *, method: str = "GET") -> str:
        """Call the pod's sidecar admin API (``127.0.0.1:15000`` in the pod) and return the body."""
        ...

    def access_log_lines(self, pod: str) -> list[str]:
        """The pod sidecar's access-log lines so far (Istio JSON format)."""
        ...

    def prometheus_configured(self) -> bool:
        """Whether :meth:`prometheus` can give a client (the local lab starts its own; a
        cluster needs ``prometheus_url`` in its settings)."""
        ...

    def prometheus(self) -> Any:
        """A query client of the Prometheus that scrapes the lab
        (:class:`meshlab.envs.prometheus_api.PrometheusClient`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Topology and environment facts for the run journal (JSON-ready)."""
        ...
