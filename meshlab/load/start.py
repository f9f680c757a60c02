"""Start or run a load: one runner process, or a group of them (``LoadSpec.processes`` > 1).

The one place that chooses between :mod:`meshlab.load.driver` (one runner through a Shell) and
:mod:`meshlab.load.group` (N runners whose results merge exactly), so neither imports the other's
dispatcher.
"""

from __future__ import annotations

from pathlib import Path

from meshlab.envs.base import Shell
from meshlab.load.driver import LoadHandle, LoadResult, run_runner, start_runner
from meshlab.load.group import LoadGroup, start_group
from meshlab.load.spec import LoadSpec


def start_load(shell: Shell, spec: LoadSpec, out_path: Path,
               python: str | None = None) -> LoadHandle | LoadGroup:
    """Start the load in the background, e.g. to inject a fault while it runs.

    Args:
        shell: where the runner runs.
        spec: the load.
        out_path: result JSON path on this machine; the runner's stderr goes to the local
            ``<out_path>.stderr``.
        python: interpreter with meshlab installed, as seen by ``shell`` (default: the
            shell's ``runner_python``, else ``sys.executable``).

    Returns:
        A :class:`~meshlab.load.driver.LoadHandle`, or with ``spec.processes`` > 1 a
        :class:`~meshlab.load.group.LoadGroup` (the same interface) over one runner per
        process, whose result is the exact merge of theirs. Call ``wait()`` for the result.

    Raises:
        LabError: a runner could not be started.
    """
    if spec.processes > 1:
        return start_group(shell, spec, out_path, python)
    return start_runner(shell, spec, out_path, python)


def run_load(shell: Shell, spec: LoadSpec, out_path: Path,
             python: str | None = None) -> LoadResult:
    """Run the load to completion through ``shell`` and return its result (arguments as for
    :func:`start_load`).

    Raises:
        LabError: a runner exited non-zero, timed out (``duration_s + 30`` s) or wrote no valid
            result; the message carries the tail of its stderr.
    """
    if spec.processes > 1:
        return start_group(shell, spec, out_path, python).wait()
    return run_runner(shell, spec, out_path, python)
