"""A load split over N runner processes in one place (the client pod's netns), merged exactly.

``LoadSpec(processes=N)`` (N > 1) makes :func:`meshlab.load.start.run_load` and
:func:`~meshlab.load.start.start_load` come here: :func:`split_spec` cuts the spec into N
single-process specs, :func:`start_group` starts one runner per part through the same
:class:`~meshlab.envs.base.Shell` (each its own :class:`~meshlab.load.driver.LoadHandle`, so a
pod exec works as a netns does), and :class:`LoadGroup` waits for (or stops) them all and merges
their files with :func:`meshlab.load.merge.merge_results` (``run_load`` is ``start_group(...)
.wait()``: one code path). This is Locust's ``--processes N`` without its master: every process
records its own µs histograms and the merge adds them, so nothing is averaged.

Files: part ``i`` writes ``<out stem>.p<i><suffix>`` (e.g. ``load-base.p0.json``) beside the
merged ``out_path``, and ``<that>.stderr``.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshlab.envs.base import Shell
from meshlab.errors import LabError, MeshlabError
from meshlab.load.driver import LoadResult, start_runner, wait_budget_s
from meshlab.load.locust_runner import write_json_atomic
from meshlab.load.merge import merge_results
from meshlab.load.spec import POOL_FIELD, LoadSpec
from meshlab.polling import PollTimeout, wait_until

log = logging.getLogger(__name__)


def shares(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` integers that differ by at most one, the remainder going
    to the first ones (``shares(10, 3) == [4, 3, 3]``)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def split_spec(spec: LoadSpec) -> list[LoadSpec]:
    """The single-process specs of ``spec``: rate ``rate_per_s / N`` each; ``max_requests``
    and ``users`` (closed loop) or ``connections`` (open loop) split by :func:`shares`; the
    Poisson ``seed`` + i (independent arrivals, not N copies of one schedule); names
    ``<name>.p<i>``; the rest as is.

    Returns:
        ``spec.processes`` specs with ``processes=1`` (``[spec]`` when it is 1).
    """
    n = spec.processes
    if n == 1:
        return [spec]
    split = {key: shares(value, n) for key in (POOL_FIELD[spec.mode], "max_requests")
             if (value := getattr(spec, key)) is not None}
    rate = None if spec.rate_per_s is None else spec.rate_per_s / n
    return [replace(spec, processes=1, rate_per_s=rate, name=f"{spec.name}.p{i}",
                    seed=spec.seed + i, **{key: values[i] for key, values in split.items()})
            for i in range(n)]


def part_path(out_path: Path, index: int) -> Path:
    """Where part ``index`` of a load whose merged result goes to ``out_path`` writes."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.p{index}{out_path.suffix}")


def _stop_running(handles: Iterable[Any], why: str) -> None:
    """Stop (SIGTERM, 5 s grace) the ``handles`` still running; their errors are logged with
    ``why``."""
    for handle in handles:
        if not handle.running:
            continue
        try:
            handle.stop(grace_s=5.0)
        except MeshlabError as exc:
            log.warning("load %r stopped %s: %s", handle.spec.name, why, exc)


class LoadGroup:
    """N runner processes of one load (see the module docstring); the interface of
    :class:`~meshlab.load.driver.LoadHandle` (``spec``, ``running``, ``out_path``, ``wait``,
    ``stop``).

    Args:
        spec: the whole load (``processes`` > 1).
        out_path: the merged result's path on this machine.
        handles: one started handle per part, in part order.

    Attributes:
        handles: the parts' :class:`~meshlab.load.driver.LoadHandle`.
    """

    def __init__(self, spec: LoadSpec, out_path: Path, handles: list[Any]) -> None:
        self.spec, self.handles = spec, handles
        self._out_path = Path(out_path)
        self._deadline_s = time.monotonic() + wait_budget_s(spec)

    def __repr__(self) -> str:
        live = sum(h.running for h in self.handles)
        return f"LoadGroup(name={self.spec.name!r}, processes={len(self.handles)}, running={live})"

    @property
    def running(self) -> bool:
        """True while any process has not exited."""
        return any(h.running for h in self.handles)

    @property
    def out_path(self) -> Path:
        """The merged result's path on this machine."""
        return self._out_path

    def wait(self, timeout_s: float | None = None) -> Any:
        """Wait for every process, merge their results, write and return the merged one.

        Args:
            timeout_s: seconds to wait in all; default: until ``duration_s + timeout_s + 30``
                s after the start.

        Returns:
            The merged :class:`~meshlab.load.driver.LoadResult` (``processes`` = N);
            :meth:`~meshlab.load.result.LoadResult.not_measured` in a dry run.

        Raises:
            LabError: a process did not finish in time (it is killed), failed or wrote no
                valid result; the others are stopped first, so none is left running.
        """
        deadline_s = self._deadline_s if timeout_s is None else time.monotonic() + timeout_s
        try:  # until all have exited, or one has failed (then it is waited for first)
            wait_until(lambda: [h.process.poll() for h in self.handles],
                       lambda codes: None not in codes or any(codes),
                       timeout_s=max(0.0, deadline_s - time.monotonic()),
                       what=f"the processes of load {self.spec.name!r}", every_s=0.05)
        except PollTimeout:
            pass  # the handles' own wait kills and reports what still runs
        order = sorted(range(len(self.handles)), key=lambda i: not self.handles[i].process.poll())
        parts: dict[int, dict[str, Any]] = {}
        for index in order:
            handle = self.handles[index]
            try:
                data = handle.wait_data(timeout_s=max(0.0, deadline_s - time.monotonic()))
                if data is None:  # a dry run: nothing was measured
                    return LoadResult.not_measured(self.spec)
                parts[index] = data
                LoadResult.from_dict(data)  # a malformed part fails here, not in merge
            except MeshlabError as exc:
                _stop_running(self.handles, "after a sibling failed")
                raise LabError(f"load {self.spec.name!r}: process {index} of "
                               f"{len(self.handles)}: {exc}") from exc
        merged = merge_results([parts[i] for i in range(len(self.handles))])
        write_json_atomic(self._out_path, merged)
        return LoadResult.from_dict(merged, name=self.spec.name)

    def stop(self, grace_s: float = 10.0) -> Any:
        """Stop every process early (SIGTERM to all, then wait); each writes what it recorded.

        Raises:
            LabError: as for :meth:`wait`.
        """
        for handle in self.handles:
            if handle.running:
                try:
                    handle.process.send_signal(signal.SIGTERM)
                except MeshlabError as exc:  # ended meanwhile; wait() reports a real failure
                    log.warning("load %r: %s", handle.spec.name, exc)
        return self.wait(timeout_s=grace_s)


def start_group(shell: Shell, spec: LoadSpec, out_path: Path,
                python: str | None = None) -> LoadGroup:
    """Start ``spec.processes`` runners through ``shell`` (see the module docstring).

    Args:
        shell: where every runner runs.
        spec: the whole load.
        out_path: the merged result's path on this machine.
        python: interpreter with meshlab installed, as seen by ``shell``.

    Raises:
        LabError: a runner could not be started (those already started are stopped).
    """
    Path(out_path).unlink(missing_ok=True)
    handles: list[Any] = []
    try:
        for index, part in enumerate(split_spec(spec)):
            handles.append(start_runner(shell, part, part_path(out_path, index), python))
    except BaseException:
        _stop_running(handles, "after a sibling failed to start")
        raise
    return LoadGroup(spec, out_path, handles)
