"""Drive the Locust runner through a :class:`~meshlab.envs.base.Shell` and read its result.

The runner (:mod:`meshlab.load.locust_runner`) always lives in its own process: gevent's
monkey-patching must never reach the suite process, and the lab runs the process inside the
client pod's network namespace (``ip netns exec``). This module therefore only builds argv, runs it
through a Shell and parses the JSON of CONTRACTS.md §2 into a :class:`LoadResult`.

On a cluster the runner runs in the client pod (a pod exec): the shell says so with
``shares_files = False``, the runner then writes a pod-local file which
:class:`~meshlab.load.result_file.ResultFile` fetches with ``cat`` through the same shell and
removes, and the shell's ``runner_python`` is the interpreter (see
:class:`meshlab.envs.base.Shell`). Both envs take the same code path.

Typical use from a suite::

    spec = LoadSpec(url="http://fortio-server:8080/echo", users=4, rate_per_s=200, duration_s=30)
    handle = start_load(env.pod_shell("netshoot"), spec, run_dir / "baseline.json")  # load.start
    fault.inject(); ...; fault.revert()
    result = handle.wait()
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshlab.envs.base import Shell
from meshlab.errors import LabError
from meshlab.load.result import LoadResult, SeriesPoint
from meshlab.load.result_file import ResultFile
from meshlab.load.spec import MAX_DURATION_S, MAX_USERS, LoadSpec

__all__ = ["MAX_DURATION_S", "MAX_USERS", "LoadHandle", "LoadResult", "LoadSpec", "ResultFile",
           "SeriesPoint", "read_result", "run_runner", "runner_argv", "start_runner"]

RUNNER_MODULE = "meshlab.load.locust_runner"
WAIT_MARGIN_S = 30.0
"""Seconds beyond ``duration_s`` the driver waits for the runner (start-up, writing JSON)."""
_STDERR_TAIL_CHARS = 2000


def wait_budget_s(spec: LoadSpec) -> float:
    """Seconds the driver waits for a runner of ``spec`` (a one-process load, or each part of
    a group): ``duration_s + timeout_s + WAIT_MARGIN_S``."""
    return spec.duration_s + spec.timeout_s + WAIT_MARGIN_S


def runner_argv(spec: LoadSpec, out_path: Path | str, python: str = sys.executable) -> list[str]:
    """The command that runs :mod:`meshlab.load.locust_runner` for ``spec``.

    Args:
        spec: the load to drive.
        out_path: where the runner writes the result JSON (as the runner sees it).
        python: interpreter that has meshlab installed.

    Returns:
        argv for :meth:`Shell.run` / :meth:`Shell.popen`.
    """
    argv = [python, "-m", RUNNER_MODULE, "--url", spec.url, "--users", str(spec.users),
            "--duration-s", repr(float(spec.duration_s)), "--timeout-s",
            repr(float(spec.timeout_s)), "--out", str(out_path)]
    if spec.rate_per_s is not None:
        argv += ["--rate-per-s", repr(float(spec.rate_per_s))]
    if spec.max_requests is not None:
        argv += ["--max-requests", str(spec.max_requests)]
    if spec.mode == "open-loop":
        argv += ["--mode", spec.mode, "--distribution", spec.distribution, "--connections",
                 str(spec.connections), "--seed", str(spec.seed)]
    return argv


def read_result(path: Path, name: str = "") -> LoadResult:
    """Read a runner's ``--out`` file.

    Args:
        path: the result JSON.
        name: journal name to attach.

    Raises:
        LabError: the file is missing or not a valid result.
    """
    return LoadResult.from_dict(read_result_data(path), name=name)


def read_result_data(path: Path) -> dict[str, Any]:
    """Read a runner's ``--out`` file as the JSON object it holds (the CONTRACTS.md §2 dict, for
    callers that merge results, :mod:`meshlab.load.group`; :meth:`LoadResult.from_dict` checks
    its fields).

    Raises:
        LabError: the file is missing, not JSON or not a JSON object.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read load result {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LabError(f"cannot read load result {path}: not a JSON object")
    return data


def _tail(text: str) -> str:
    text = text.strip()
    return text[-_STDERR_TAIL_CHARS:] if text else "(no stderr)"


def _python(shell: Shell, python: str | None) -> str:
    """``python``, else the shell's ``runner_python``, else this interpreter."""
    return python or getattr(shell, "runner_python", None) or sys.executable


def run_runner(shell: Shell, spec: LoadSpec, out_path: Path,
               python: str | None = None) -> LoadResult:
    """Run one runner process to completion through ``shell`` and return its result
    (:func:`meshlab.load.start.run_load` chooses between this and a group of processes).

    Args:
        shell: where the runner runs (e.g. the client pod's netns, or the pod itself).
        spec: the load.
        out_path: result JSON path on this machine (fetched there when ``shell`` does not
            share this machine's filesystem, see :class:`ResultFile`).
        python: interpreter with meshlab installed, as seen by ``shell``; default: the
            shell's ``runner_python``, else ``sys.executable``.

    Returns:
        The parsed :class:`LoadResult` (:meth:`LoadResult.not_measured` in a dry run).

    Raises:
        LabError: the runner exited non-zero, timed out (``duration_s + 30`` s) or wrote no
            valid result; the message carries the tail of its stderr.
    """
    out = ResultFile(shell, spec.name, out_path)
    argv = runner_argv(spec, out.runner_path, _python(shell, python))
    result = shell.run(argv, check=False, timeout_s=wait_budget_s(spec))
    if not result.ok:
        out.discard()
        raise LabError(f"load {spec.name!r} failed (exit {result.returncode}) on {shell.name}: "
                       f"{_tail(result.stderr)}")
    path = out.fetch()
    return LoadResult.not_measured(spec) if path is None else read_result(path, name=spec.name)


class LoadHandle:
    """A load running in the background (see :func:`start_runner`).

    Attributes:
        spec: the load.
        result_file: the runner's result file (:class:`ResultFile`).
        stderr_path: local file receiving the runner's stderr.
        process: the runner process through the shell's transport (``subprocess.Popen``, or a
            Popen-like such as the kube env's ``ExecProcess``).
    """

    def __init__(self, spec: LoadSpec, result_file: ResultFile, stderr_path: Path,
                 process: Any) -> None:
        self.spec = spec
        self.result_file = result_file
        self.stderr_path = stderr_path
        self.process = process
        self._deadline_s = time.monotonic() + wait_budget_s(spec)

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"LoadHandle(name={self.spec.name!r}, pid={self.process.pid}, {state})"

    @property
    def running(self) -> bool:
        """True while the runner process has not exited."""
        return self.process.poll() is None

    @property
    def out_path(self) -> Path:
        """The result JSON path on this machine."""
        return self.result_file.local

    def wait(self, timeout_s: float | None = None) -> LoadResult:
        """Wait for the runner to finish and return its result.

        Args:
            timeout_s: seconds to wait; default: until ``duration_s + 30`` s after the start.

        Returns:
            The result (:meth:`LoadResult.not_measured` in a dry run).

        Raises:
            LabError: the runner did not finish in time (it is killed), exited non-zero or
                wrote no valid result.
        """
        data = self.wait_data(timeout_s)
        if data is None:
            return LoadResult.not_measured(self.spec)
        return LoadResult.from_dict(data, name=self.spec.name)

    def wait_data(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """As :meth:`wait`, but return the result as the runner wrote it (the decoded JSON
        object, see :func:`read_result_data`; its fields are not checked), None in a dry run
        (not measured)."""
        if timeout_s is None:
            timeout_s = max(0.0, self._deadline_s - time.monotonic())
        try:
            returncode = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait()
            self.result_file.discard()
            raise LabError(f"load {self.spec.name!r} did not finish within {timeout_s:.0f} s; "
                           f"killed: {_tail(self._stderr())}") from exc
        if returncode != 0:
            self.result_file.discard()
            raise LabError(f"load {self.spec.name!r} failed (exit {returncode}): "
                           f"{_tail(self._stderr())}")
        path = self.result_file.fetch()
        return None if path is None else read_result_data(path)

    def stop(self, grace_s: float = 10.0) -> LoadResult:
        """Stop the load early (SIGTERM); the runner writes what it recorded so far.

        Args:
            grace_s: seconds to wait for the runner to write its result.

        Raises:
            LabError: as for :meth:`wait`.
        """
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s=grace_s)

    def _stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def start_runner(shell: Shell, spec: LoadSpec, out_path: Path,
               python: str | None = None) -> LoadHandle:
    """Start the load in the background, e.g. to inject a fault while it runs.

    Args:
        shell: where the runner runs.
        spec: the load.
        out_path: result JSON path on this machine (see :func:`run_runner`); the runner's stderr
            goes to the local ``<out_path>.stderr``.
        python: interpreter with meshlab installed, as seen by ``shell`` (default as for
            :func:`run_runner`).

    Returns:
        A :class:`LoadHandle`; call :meth:`LoadHandle.wait` for the result.
        (:func:`meshlab.load.start.start_load` chooses between this and a group of processes.)

    Raises:
        LabError: the runner could not be started.
    """
    out = ResultFile(shell, spec.name, out_path)
    stderr_path = out.local.with_name(out.local.name + ".stderr")
    stderr_path.unlink(missing_ok=True)
    process = shell.popen(runner_argv(spec, out.runner_path, _python(shell, python)),
                          stderr=stderr_path)
    return LoadHandle(spec, out, stderr_path, process)
