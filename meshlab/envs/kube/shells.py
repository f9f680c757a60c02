"""Shell transports of the kube env: pod exec (app or debug container) and node ``nsenter``.

The argv a fault or collector builds is the one the local lab runs (DESIGN.md §1); only the
transport differs:

- :class:`KubePodShell` execs in the pod. Network tools (:data:`DEBUG_TOOLS`: ``ss``,
  ``conntrack``, ``iptables`` …) are not in app images (fortio's is ``FROM scratch``) and need
  ``NET_ADMIN``, so they run in an ephemeral debug container (``settings.debug_image``, the
  netshoot image ``kubectl debug --profile=netadmin`` would use) that shares the pod's network
  namespace, created once per pod by :class:`DebugContainers`. Other commands run in the app
  container (the pod's first non-``istio-proxy`` container). A background command
  (:meth:`KubePodShell.popen`) is an :class:`~meshlab.envs.kube.process.ExecProcess`.
- :class:`NsenterShell` wraps a node's :class:`~meshlab.envs.ssh.SshShell`: argv runs as
  ``nsenter -t 1 -n <argv>``, in the network namespace of the node's PID 1 (the node's root
  netns, also when sshd itself runs in a container).
"""

from __future__ import annotations

import secrets
import threading
from functools import partial
from pathlib import Path
from typing import Any

from meshlab.envs.base import CommandResult, Shell
from meshlab.envs.kube.facade import ClusterApi, kubectl_exec_argv
from meshlab.envs.kube.process import ExecProcess, wrap
from meshlab.errors import CommandError, LabError
from meshlab.polling import PollTimeout, wait_until

#: Programs run in the debug container instead of the app container (argv[0] basename).
DEBUG_TOOLS = frozenset({
    "ss", "conntrack", "iptables", "iptables-save", "iptables-restore", "ip6tables",
    "ip6tables-save", "ip6tables-restore", "nft", "ip", "tc", "sysctl", "nstat", "tcpdump",
    "pgrep", "pkill",  # the debug container shares the app's process namespace
})
DEBUG_PREFIX = "meshlab-debug"
SIDECAR = "istio-proxy"
NSENTER = ["nsenter", "-t", "1", "-n"]
SIGNAL_TIMEOUT_S = 30.0
"""Timeout in seconds of the short execs (``cat`` pid file, ``kill``) that signal a background
command."""


def app_container(pod: dict[str, Any]) -> str:
    """The pod's first container that is not the ``istio-proxy`` sidecar."""
    names = [c["name"] for c in pod["spec"]["containers"]]
    return next((n for n in names if n != SIDECAR), names[0])


class DebugContainers:
    """Ephemeral debug containers, one per pod, created on first use and then reused.

    Ephemeral containers cannot be removed (they go with the pod, and the pods with the lab's
    namespace). A running ``meshlab-debug*`` container left by an earlier runner (the fault
    deadman builds a fresh env) is found in the pod's status and reused; a terminated one is
    replaced by ``meshlab-debug-<n>``.

    Args:
        api: the cluster facade.
        namespace: the lab namespace.
        image: the debug image.
        timeout_s: how long to wait for the container to run.
        poll_s: seconds between status polls.
    """

    def __init__(self, api: ClusterApi, namespace: str, image: str, timeout_s: float,
                 poll_s: float = 1.0) -> None:
        self.api, self.namespace, self.image = api, namespace, image
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()  # the collectors' sampler thread execs too

    def __repr__(self) -> str:
        return f"DebugContainers(namespace={self.namespace!r}, pods={self._names!r})"

    def spec(self, name: str, target: str) -> dict[str, Any]:
        """The ephemeral container: the debug image sleeping, NET_ADMIN + NET_RAW, as root."""
        return {"name": name, "image": self.image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "infinity"], "stdin": False, "tty": False,
                "targetContainerName": target,
                "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}}

    @staticmethod
    def _states(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {s["name"]: s.get("state") or {}
                for s in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []}

    def container(self, pod: str) -> str:
        """The name of ``pod``'s running debug container, creating it if needed.

        Raises:
            LabError: it did not run within ``timeout_s`` (the reason is named, e.g. an
                image pull failure or ephemeral containers disabled).
        """
        with self._lock:
            if pod not in self._names:
                self._names[pod] = self._find_or_add(pod)
            return self._names[pod]

    def _find_or_add(self, pod: str) -> str:
        obj = self.api.read_pod(self.namespace, pod)
        states = self._states(obj)
        ours = [c["name"] for c in obj["spec"].get("ephemeralContainers") or []
                if c["name"].startswith(DEBUG_PREFIX)]
        running = [n for n in ours if "running" in states.get(n, {})]
        if running:
            return running[0]
        name = DEBUG_PREFIX if not ours else f"{DEBUG_PREFIX}-{len(ours)}"
        self.api.add_ephemeral_container(self.namespace, pod,
                                         self.spec(name, app_container(obj)))
        if not self.api.dry_run:
            self._wait_running(pod, name)
        return name

    def _wait_running(self, pod: str, name: str) -> None:
        def state_of() -> dict[str, Any]:
            return self._states(self.api.read_pod(self.namespace, pod)).get(name, {})

        try:
            state = wait_until(state_of, lambda st: "running" in st or "terminated" in st,
                               timeout_s=self.timeout_s, every_s=self.poll_s,
                               what=f"debug container {name} running")
        except PollTimeout as exc:
            state = exc.last or {}
        if "running" in state:
            return
        detail = state.get("waiting") or state.get("terminated") or {}
        raise LabError(f"debug container {name} in {self.namespace}/{pod} not running after "
                       f"{self.timeout_s:g} s: {detail.get('reason', 'no status')}: "
                       f"{detail.get('message', '')} (image {self.image}; needs ephemeral "
                       "containers, Kubernetes >= 1.25, and RBAC on pods/ephemeralcontainers)")


class KubePodShell:
    """Runs argv in a pod through exec (implements :class:`meshlab.envs.base.Shell`).

    Args:
        api: the cluster facade.
        namespace: the pod's namespace.
        pod: the pod name.
        app: the app container's name.
        debug: the env's :class:`DebugContainers`.
        runner_python: interpreter with meshlab installed in the pod's image
            (``settings.runner_python``), for the load runner; None: the runner's own.

    Attributes:
        shares_files: False: a file a command writes is in the pod, not on this machine (the
            load driver fetches the runner's result with ``cat``).
    """

    shares_files = False

    def __init__(self, api: ClusterApi, namespace: str, pod: str, app: str,
                 debug: DebugContainers, runner_python: str | None = None) -> None:
        self.api, self.namespace, self.pod, self.app, self.debug = api, namespace, pod, app, debug
        self.runner_python = runner_python
        self.name = pod

    def __repr__(self) -> str:
        return f"KubePodShell(pod={self.namespace}/{self.pod}, app={self.app!r})"

    @property
    def dry_run(self) -> bool:
        """Whether commands are only printed (they "exit 0" with no output)."""
        return bool(self.api.dry_run)

    def container_for(self, argv: list[str]) -> str:
        """The container ``argv`` runs in (debug for :data:`DEBUG_TOOLS`, else the app's)."""
        if argv and Path(argv[0]).name in DEBUG_TOOLS:
            return self.debug.container(self.pod)
        return self.app

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Exec ``argv`` in the pod (see :meth:`Shell.run`)."""
        result = self.api.exec(self.namespace, self.pod, self.container_for(argv), list(argv),
                               timeout_s=timeout_s, input_text=input_text)
        if check and result.returncode != 0:
            raise CommandError(result.argv, result.returncode, result.stdout[-2000:],
                               result.stderr[-2000:])
        return result

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> ExecProcess:
        """Start ``argv`` in the pod in the background (see :mod:`meshlab.envs.kube.process`):
        its stdout/stderr are appended to the local files as they arrive, and signals reach it
        in the pod.

        Raises:
            LabError: ``user`` was given (an exec runs as the container's user), or the exec
                could not start.
        """
        if user is not None:
            raise LabError(f"popen in pod {self.pod}: user={user!r} is not supported through "
                           "exec (commands run as the container's user)")
        container = self.container_for(argv)
        pid_file = f"/tmp/meshlab-bg-{secrets.token_hex(6)}.pid"
        wrapped = wrap(list(argv), pid_file)
        stream = self.api.exec_stream(self.namespace, self.pod, container, wrapped)
        what = " ".join(kubectl_exec_argv(self.namespace, self.pod, container, list(argv)))
        run = partial(self.api.exec, self.namespace, self.pod, container,
                      timeout_s=SIGNAL_TIMEOUT_S)
        return ExecProcess(stream, what, pid_file, run, stdout=stdout, stderr=stderr)


class NsenterShell:
    """A node Shell: ``nsenter -t 1 -n <argv>`` through another Shell (SSH, or the dry-run
    printer), so commands see the node's root network namespace.

    Args:
        inner: the transport to the node.
    """

    def __init__(self, inner: Shell) -> None:
        self.inner = inner
        self.name = inner.name

    def __repr__(self) -> str:
        return f"NsenterShell(inner={self.inner!r})"

    @property
    def dry_run(self) -> bool:
        """Whether the inner transport only prints (the dry run's)."""
        return bool(getattr(self.inner, "dry_run", False))

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Run ``argv`` in the node's root netns (see :meth:`Shell.run`)."""
        return self.inner.run([*NSENTER, *argv], check=check, timeout_s=timeout_s,
                              input_text=input_text)

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> Any:
        """Start ``argv`` in the node's root netns through the inner Shell."""
        return self.inner.popen([*NSENTER, *argv], stdout=stdout, stderr=stderr, user=user)
