"""Where the load runner writes its result, and how the driver gets it back.

The runner (:mod:`meshlab.load.locust_runner`) writes its result JSON (CONTRACTS.md §2) to the
``--out`` path. In the local lab it runs in a netns of this machine and writes the driver's
path itself. On a cluster it runs in the client pod, whose filesystem is not this machine's:
its Shell says so with ``shares_files = False`` (:class:`meshlab.envs.base.Shell`), the runner
then writes a pod-local ``/tmp/meshlab-load-<name>-<random>.json``, and :class:`ResultFile`
fetches it with ``cat`` through the same Shell and removes it in the pod (``rm -f``). In a dry
run the ``cat`` and the ``rm`` are printed and the file is empty: the result is not measured.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path

from meshlab.envs.base import Shell
from meshlab.errors import LabError, MeshlabError
from meshlab.missing import dry_run_active

log = logging.getLogger(__name__)

REMOTE_DIR = "/tmp"
"""Where the runner writes its result when its shell does not share our filesystem."""
FETCH_TIMEOUT_S = 60.0
"""Timeout in seconds of fetching (``cat``) or removing (``rm -f``) a pod-local result."""
_STDERR_TAIL_CHARS = 500


class ResultFile:
    """The runner's ``--out`` file, as the runner's shell and this process see it.

    Args:
        shell: where the runner runs.
        name: the load's name (part of the pod-local file name, and of messages).
        local: the result path on this machine; a previous run's file there is removed.

    Attributes:
        local: the result path on this machine.
        remote: the pod-local path the runner writes, None when ``shell`` shares this
            machine's filesystem (the runner writes :attr:`local`).
    """

    def __init__(self, shell: Shell, name: str, local: Path) -> None:
        self.shell, self.name = shell, name
        self.local = Path(local)
        self.local.unlink(missing_ok=True)  # never mistake a previous run's file for this one's
        self.remote: str | None = None
        if not getattr(shell, "shares_files", True):
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]
            self.remote = f"{REMOTE_DIR}/meshlab-load-{slug}-{secrets.token_hex(4)}.json"
        self._in_pod = self.remote is not None  # not fetched nor removed yet

    def __repr__(self) -> str:
        return f"ResultFile(local={str(self.local)!r}, remote={self.remote!r})"

    @property
    def runner_path(self) -> str:
        """The ``--out`` path the runner is given."""
        return self.remote or str(self.local)

    def fetch(self) -> Path | None:
        """The local result file, fetched first (once) when the runner wrote a pod-local one,
        which is then removed.

        Returns:
            :attr:`local`; None in a dry run (:func:`meshlab.missing.dry_run_active`), where
            the ``cat`` printed and answered nothing: the result was not measured.

        Raises:
            LabError: the pod-local file could not be read (its ``cat`` error named) or is
                empty.
        """
        if self._in_pod:
            try:
                got = self.shell.run(["cat", self.runner_path], check=False,
                                     timeout_s=FETCH_TIMEOUT_S)
            finally:
                self.discard()
            if got.ok and not got.stdout.strip() and dry_run_active():
                return None
            if not got.ok or not got.stdout.strip():
                why = got.stderr.strip()[-_STDERR_TAIL_CHARS:] if not got.ok else "empty file"
                raise LabError(f"load {self.name!r}: cannot fetch its result {self.runner_path} "
                               f"from {self.shell.name} (exit {got.returncode}): {why}")
            self.local.write_text(got.stdout)
        return self.local

    def discard(self) -> None:
        """Remove the pod-local file (nothing on a shared filesystem, or once removed). Best
        effort: a failure is logged, since the error being reported is the runner's."""
        if not self._in_pod:
            return
        self._in_pod = False
        try:
            self.shell.run(["rm", "-f", self.runner_path], check=False, timeout_s=FETCH_TIMEOUT_S)
        except MeshlabError as exc:
            log.warning("load %r: cannot remove %s on %s: %s", self.name, self.runner_path,
                        self.shell.name, exc)
