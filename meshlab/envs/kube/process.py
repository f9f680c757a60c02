"""Background commands in a pod: a ``subprocess.Popen``-like handle over an exec stream.

``kubectl exec`` has no process id and no way to signal the command it started (closing the
stream does not stop it: the container runtime keeps the process). So a background command runs
under a small ``sh`` wrapper (:data:`PID_WRAPPER`) that writes the command's pid into a pod-local
file and removes the file when the command ends; :meth:`ExecProcess.send_signal` reads the pid
(``cat``) and delivers the signal *in the pod* with the shell's ``kill`` builtin (``sh -c
'kill -TERM <pid>'``; slim images such as ``debian:12-slim`` have no ``/bin/kill``, it comes
with ``procps``). A thread reads the stream: stdout and stderr (channels 1 and 2, bytes cut
anywhere by the kubelet, decoded incrementally) are appended to local files as they arrive, the
exit ``Status`` (channel 3) gives :attr:`returncode`.

Only the subset of ``Popen`` that meshlab's callers use is offered: ``pid``, ``poll()``,
``wait(timeout)``, ``returncode``, ``send_signal(sig)``, ``terminate()``, ``kill()``.
"""

from __future__ import annotations

import codecs
import json
import logging
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websocket import WebSocketException

from meshlab.envs.base import CommandResult
from meshlab.envs.kube.streams import exit_code
from meshlab.errors import LabError, MeshlabError
from meshlab.polling import PollTimeout, wait_until

log = logging.getLogger(__name__)

#: ``sh -c PID_WRAPPER meshlab-bg <pid file> <argv...>``: run argv, its pid in the pid file while
#: it runs; exits with argv's status (128 + signal when a signal ended it).
PID_WRAPPER = 'f=$1; shift; "$@" & echo $! >"$f"; wait $!; rc=$?; rm -f "$f"; exit $rc'
WRAPPER_NAME = "meshlab-bg"
PID_TIMEOUT_S = 10.0
"""Seconds :meth:`ExecProcess.send_signal` waits for the wrapper to write the pid file."""
KILL_GRACE_S = 5.0
"""Seconds :meth:`ExecProcess.kill` waits for the stream to end before giving it up locally."""
_SUCCESS = json.dumps({"metadata": {}, "status": "Success"}).encode()


def wrap(argv: list[str], pid_file: str) -> list[str]:
    """The argv that runs ``argv`` in the background of :data:`PID_WRAPPER`."""
    return ["sh", "-c", PID_WRAPPER, WRAPPER_NAME, pid_file, *argv]


def kill_argv(pid: int, sig: int) -> list[str]:
    """``sh -c 'kill -<NAME> <pid>'`` (the builtin; ``NAME`` e.g. ``TERM``)."""
    return ["sh", "-c", f"kill -{signal.Signals(sig).name.removeprefix('SIG')} {int(pid)}"]


class FinishedStream:
    """An exec stream that has already ended with exit 0 and no output (the dry run's)."""

    def is_open(self) -> bool:
        """Always False."""
        return False

    def update(self, timeout: float = 0) -> None:
        """Nothing arrives."""

    def read_channel(self, channel: int, timeout: float = 0) -> bytes:
        """Empty, except the ``Success`` status on channel 3 (bytes, as a binary stream's)."""
        return _SUCCESS if channel == 3 else b""

    def close(self, **kwargs: Any) -> None:
        """Nothing to close."""


class ExecProcess:
    """A command running in a pod through an open exec stream (see the module docstring).

    Args:
        stream: the open exec WebSocket (``kubernetes.stream.ws_client.WSClient`` in binary
            mode, or :class:`FinishedStream`), started with :func:`wrap`.
        what: the command as ``kubectl exec`` would print it, for messages.
        pid_file: the wrapper's pod-local pid file.
        run: runs a short argv to completion in the same container (``cat``, ``kill``).
        stdout: local file receiving the command's stdout (appended), None: discarded.
        stderr: local file receiving the command's stderr (appended), None: discarded.
        poll_s: seconds the reader thread waits for a frame before checking for a local stop.

    Attributes:
        pid: the command's pid in the pod, once read (by the first signal), else None.
        returncode: None while running; the exit status, 255 when the stream failed without
            one (the reason is appended to ``stderr``), ``-SIGKILL`` when :meth:`kill` had to
            give the stream up.
    """

    def __init__(self, stream: Any, what: str, pid_file: str,
                 run: Callable[[list[str]], CommandResult], *, stdout: Path | None,
                 stderr: Path | None, poll_s: float = 0.2) -> None:
        self.what, self.pid_file, self.poll_s = what, pid_file, poll_s
        self.pid: int | None = None
        self.returncode: int | None = None
        self._stream, self._run = stream, run
        self._files = {1: stdout, 2: stderr}
        self._decoders = {ch: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for ch in (1, 2)}
        self._done = threading.Event()
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._pump, name=f"exec {what[:60]}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"ExecProcess({self.what!r}, pid={self.pid}, returncode={self.returncode})"

    # the reader thread -----------------------------------------------------------------
    def _pump(self) -> None:
        code = 255
        try:
            while self._stream.is_open() and not self._abandon.is_set():
                try:
                    self._stream.update(timeout=self.poll_s)
                except WebSocketException:
                    self._stream._connected = False  # dropped by the server: what came is all
                self._drain()
            self._drain(final=True)
            if self._abandon.is_set():
                code = -signal.SIGKILL
                self._append(2, f"meshlab: gave up the exec stream of {self.what}\n")
            else:
                code = exit_code(self._stream.read_channel(3), self.what)
        except (MeshlabError, WebSocketException, OSError, ValueError) as exc:
            self._append(2, f"meshlab: {exc}\n")
        finally:
            try:
                self._stream.close()
            except (WebSocketException, OSError):
                pass
            self.returncode = code
            self._done.set()

    def _drain(self, final: bool = False) -> None:
        for channel in (1, 2):
            text = self._decoders[channel].decode(self._stream.read_channel(channel), final)
            if text:
                self._append(channel, text)

    def _append(self, channel: int, text: str) -> None:
        path = self._files[channel]
        if path is not None:
            with open(path, "a", encoding="utf-8", errors="replace") as fh:
                fh.write(text)

    # Popen's interface -------------------------------------------------------------------
    def poll(self) -> int | None:
        """The exit status, or None while the command runs."""
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command to end and return its exit status.

        Raises:
            subprocess.TimeoutExpired: it did not end within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.what, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def _read_pid(self) -> int | None:
        def read() -> int | None:
            if self.poll() is not None:
                return -1
            out = self._run(["cat", self.pid_file]).stdout.strip()
            return int(out) if out.isdigit() else None

        try:
            pid = wait_until(read, lambda p: p is not None, timeout_s=PID_TIMEOUT_S,
                             what=f"pid file {self.pid_file} of {self.what}", every_s=0.1)
        except PollTimeout as exc:
            raise LabError(f"cannot signal {self.what}: {exc}") from exc
        return None if pid == -1 else pid

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` to the command in the pod (nothing once it has ended).

        Raises:
            LabError: the pid could not be read, or ``kill`` failed while the command runs.
        """
        if self.poll() is not None:
            return
        if self.pid is None:
            self.pid = self._read_pid()
            if self.pid is None:
                return  # it ended meanwhile
        result = self._run(kill_argv(self.pid, sig))
        if not result.ok and self.poll() is None:
            raise LabError(f"kill -{signal.Signals(sig).name} {self.pid} in the pod failed "
                           f"(exit {result.returncode}): {result.stderr.strip()[-300:]}")

    def terminate(self) -> None:
        """:meth:`send_signal` SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL in the pod; if the stream has not ended :data:`KILL_GRACE_S` later (the
        signal could not be delivered), give it up locally (:attr:`returncode` ``-SIGKILL``)."""
        try:
            self.send_signal(signal.SIGKILL)
        except MeshlabError as exc:
            log.warning("%s", exc)
        if not self._done.wait(KILL_GRACE_S):
            self._abandon.set()
            self._done.wait()
