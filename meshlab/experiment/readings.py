"""What a suite reads from the lab through its run, the same way in a real run and a dry run.

:class:`LabReadings` is the part of :class:`~meshlab.experiment.run.Run` that asks the lab for
raw facts: a pod, a shell in a pod and what its commands print, a sidecar's access log and
admin API, container usage and statuses, DNS query counts, and the pauses a suite takes as
observation windows. In a dry run (:func:`meshlab.missing.dry_run_scope`, opened by the pytest
plugin for ``--meshlab-dry-run``) every request is still made — so the printout shows it — but
what it answers is a :class:`~meshlab.missing.Missing` (nothing was measured), and a pause is
printed as a comment instead of waited. A capability the env lacks is refused with
:class:`~meshlab.errors.Unsupported` in both (a dry run reports the refusal as a skip).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from meshlab.collectors.accesslog import parse_lines
from meshlab.envs.base import CommandResult, Env, PodInfo
from meshlab.envs.capabilities import ClusterDns, Containers, PodLifecycle
from meshlab.errors import Unsupported
from meshlab.faults.targets import capable
from meshlab.missing import dry_run_active, is_missing, not_measured


class UnmeasuredShell:
    """A dry run's shell for a suite (implements :class:`meshlab.envs.base.Shell`): commands
    go through ``inner`` (which prints them) and their stdout/stderr are Missing
    (``stdout of `<argv>` in <pod>``); background commands are ``inner``'s.

    Args:
        inner: the env's shell in the pod.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.shares_files = getattr(inner, "shares_files", True)
        self.runner_python = getattr(inner, "runner_python", None)
        self.dry_run = getattr(inner, "dry_run", False)

    def __repr__(self) -> str:
        return f"UnmeasuredShell(inner={self.inner!r})"

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Run ``argv`` through the inner shell; the output is not measured."""
        got = self.inner.run(argv, check=check, timeout_s=timeout_s, input_text=input_text)
        command = shlex.join(str(a) for a in argv)
        return CommandResult(argv=got.argv, returncode=got.returncode, duration_s=got.duration_s,
                             stdout=not_measured(f"stdout of `{command}` in {self.name}"),
                             stderr=not_measured(f"stderr of `{command}` in {self.name}"))

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> Any:
        """Start ``argv`` through the inner shell (a dry run's "ends at once")."""
        return self.inner.popen(argv, stdout=stdout, stderr=stderr, user=user)


class LabReadings:
    """The lab as a suite reads it (mixed into :class:`~meshlab.experiment.run.Run`, whose
    ``env`` and ``_log_marks`` it uses; see the module docstring)."""

    env: Env
    _log_marks: dict[str, int]

    @property
    def dry_run(self) -> bool:
        """Whether this run measures nothing (a dry run: its readings are Missing)."""
        return dry_run_active()

    def pod(self, name: str) -> PodInfo:
        """A pod of the lab by name or workload (``env.pod``)."""
        return self.env.pod(name)

    def shell(self, pod: str) -> Any:
        """A shell in ``pod``'s network namespace (``env.pod_shell``; in a dry run an
        :class:`UnmeasuredShell` over it)."""
        shell = self.env.pod_shell(pod)
        return UnmeasuredShell(shell) if self.dry_run else shell

    def sidecar_admin(self, pod: str, path: str) -> str:
        """GET ``path`` from ``pod``'s sidecar admin API (:15000); the body (a dry run's: a
        Missing)."""
        body = self.env.sidecar_admin(pod, path)
        return not_measured(f"sidecar admin {path} of {pod}") if self.dry_run else body

    def records(self, pod: str) -> list[dict[str, Any]]:
        """The pod sidecar's access-log records written during this run (a dry run's: a
        Missing ``access log of <pod>``)."""
        lines = self.env.access_log_lines(pod)
        if self.dry_run:
            return not_measured(f"access log of {pod}")  # type: ignore[return-value]
        return parse_lines(lines[self._log_marks.get(pod, 0):])

    def container_usage(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {cpu_usage_us, nr_periods, nr_throttled, throttled_us, memory_bytes,
        cpu_limit_m}}`` of ``pod`` now
        (:meth:`~meshlab.envs.capabilities.Containers.container_usage`; a dry run's: a Missing).

        Raises:
            Unsupported: the env reports no container usage for the pod (a cluster's is its
                metrics pipeline's, not meshlab's).
        """
        env = capable(self.env, Containers, "container usage", "has no container cgroups")
        usage = env.container_usage(pod)
        if not usage:
            raise Unsupported(f"container usage: the {self.env.name} env reports none for pod "
                              f"{pod} (CPU and throttling come from the local lab's container "
                              "cgroups; a cluster's are its metrics pipeline's)")
        return not_measured(f"container usage of {pod}") if self.dry_run else usage

    def container_statuses(self, pod: str) -> dict[str, dict[str, Any]]:
        """``{container: {"restarts", "state", …}}`` of ``pod`` now (a dry run's: a Missing).

        Raises:
            Unsupported: the env has no kubelet restarting containers.
        """
        env = capable(self.env, PodLifecycle, "container statuses", "has no kubelet")
        statuses = env.container_statuses(pod)
        return not_measured(f"container statuses of {pod}") if self.dry_run else statuses

    def dns_query_counts(self) -> dict[str, int]:
        """``{pod: DNS queries it sent to the cluster DNS}`` (a dry run's: a Missing).

        Raises:
            Unsupported: the env does not count DNS queries per pod (a cluster: only the local
                lab's kube-dns does).
        """
        env = capable(self.env, ClusterDns, "dns query counts",
                      "counts no DNS queries per pod (only the local lab's kube-dns does)")
        counts = env.dns_query_counts()
        return not_measured("DNS query counts") if self.dry_run else counts

    def sleep(self, seconds: float, why: str = "an observation window") -> None:
        """Let ``seconds`` pass (an observation window while a load runs, not a way to wait
        for a condition: :func:`~meshlab.polling.wait_until` is). A dry run does not wait: it
        prints ``# sleep <seconds> s: <why>`` where the env prints its commands."""
        if not self.dry_run:
            time.sleep(seconds)
            return
        say = getattr(getattr(self.env, "api", None), "announce", None)  # kube's printer
        if say is not None:
            say(f"sleep {seconds if is_missing(seconds) else format(seconds, 'g')} s: {why}")
