"""``Run``: one journaled experiment against an env — load, faults, sidecar data, checks.

The suite-facing API behind the ``meshlab_run`` fixture, the CLI and the chaostoolkit probes.
It only uses the Env protocol, so a suite never knows which env runs it. What a suite reads
from the lab (a shell's output, access logs, container usage, pauses) is
:class:`~meshlab.experiment.readings.LabReadings`. In a dry run
(:func:`meshlab.missing.dry_run_scope`) every step is printed by the env and nothing is
measured: loads, stats, sockets and readings are :class:`~meshlab.missing.Missing`, and
:meth:`Run.check` journals each check as not evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from meshlab.checks.base import Check, Verdict, assert_all, record_not_evaluated
from meshlab.collectors.accesslog import codes_by_cluster, flags_by_cluster, parse_lines
from meshlab.collectors.sampler import Sampler
from meshlab.collectors.stats_text import stat_ints, stats_path
from meshlab.envs.base import Env
from meshlab.envs.capabilities import LoadJobs
from meshlab.errors import ConfigError, MeshlabError
from meshlab.experiment.names import LabNames
from meshlab.experiment.readings import LabReadings
from meshlab.faults.base import active
from meshlab.faults.protocol import Fault
from meshlab.journal import RunJournal
from meshlab.load.driver import LoadHandle, LoadResult
from meshlab.load.kube_jobs import run_load_jobs
from meshlab.load.spec import MODES, LoadSpec
from meshlab.load.start import run_load, start_load

DEFAULT_CLIENT = "netshoot"
#: ``ss`` states in which a socket can still deliver a request (``Run.settle``).
DELIVERING = frozenset({"ESTAB", "SYN-SENT", "SYN-RECV"})
ACCESS_LOG_SAMPLE = 20


class Run(LabReadings):
    """One experiment run.

    Args:
        env: the env (implements :class:`meshlab.envs.base.Env`), already up.
        journal: where everything is recorded.
        client: the pod loads run from by default (the book's ``netshoot``).
        load_mode: the mode of loads that do not pass ``mode=`` (pytest
            ``--meshlab-load-mode``): ``"closed-loop"`` (Locust) or ``"open-loop"``; a load
            without ``rate_per_s`` stays closed-loop (open loop needs a rate).

    The access logs are read from the lines written after the run started, so each run's flag
    counts are its own.
    """

    def __init__(self, env: Env, journal: RunJournal, client: str = DEFAULT_CLIENT,
                 load_mode: str = "closed-loop") -> None:
        if load_mode not in MODES:
            raise ConfigError(f"load_mode: must be one of {', '.join(MODES)}, got {load_mode!r}")
        self.env = env
        self.journal = journal
        self.client = client
        self.load_mode = load_mode
        self.started_epoch_s = time.time()
        journal.data.update(env.describe())
        if self.dry_run:
            journal.data["notes"].append(
                "dry run: every manifest and command was printed, nothing was sent or "
                "measured; loads, stats and observations are empty (null), checks not evaluated")
        if not env.sidecar_has_tcp_stats:
            from meshlab.collectors.tcp_stats_ss import NOTE

            journal.data["notes"].append(NOTE)
        journal.save()
        self._log_marks = {p.name: len(env.access_log_lines(p.name))
                           for p in env.pods() if p.meshed}
        self._sampler: Sampler | None = None

    def __repr__(self) -> str:
        return f"Run(env={self.env.name!r}, journal={self.journal!r})"

    def _spec(self, name: str, url: str, users: int, rate_per_s: float | None, duration_s: float,
              max_requests: int | None, timeout_s: float, processes: int = 1,
              mode: str | None = None, connections: int | None = None,
              distribution: str = "constant") -> LoadSpec:
        if mode is None:  # the run's default; an unthrottled load can only be closed-loop
            mode = "closed-loop" if rate_per_s is None else self.load_mode
        return LoadSpec(url=url, users=users, duration_s=duration_s, rate_per_s=rate_per_s,
                        max_requests=max_requests, timeout_s=timeout_s, name=name,
                        processes=processes, mode=mode, distribution=distribution,
                        connections=connections)

    def load(self, name: str, url: str, *, users: int = 4, rate_per_s: float | None = None,
             duration_s: float = 5.0, max_requests: int | None = None, timeout_s: float = 10.0,
             from_pod: str | None = None, processes: int = 1, jobs: bool = False,
             mode: str | None = None, connections: int | None = None,
             distribution: str = "constant") -> LoadResult:
        """Drive load from a pod to ``url`` (Locust users, or open loop) and journal the result.

        Args:
            name: the load's name in the journal and the report.
            url: target as seen from the client pod, e.g. ``http://fortio-server:8070/echo``.
            users: concurrent Locust users (keep-alive connections).
            rate_per_s: aggregate requests/s, or None for closed-loop as fast as possible.
            duration_s: run time in seconds (bounded by the spec, max 3600).
            max_requests: stop after this many requests.
            timeout_s: per-request timeout in seconds.
            from_pod: client pod (default: the run's client).
            processes: runner processes the load is split into (rate, users and requests
                shared), their results merged exactly (:mod:`meshlab.load.group`).
            jobs: run the processes as one Kubernetes Job each beside the client pod instead
                (kube env only: :mod:`meshlab.load.kube_jobs`).
            mode: ``"closed-loop"`` (Locust users) or ``"open-loop"`` (requests started at
                ``rate_per_s`` on a schedule, latency corrected for coordinated omission,
                :mod:`meshlab.load.open_loop`); default: the run's ``load_mode`` when
                ``rate_per_s`` is set, else closed-loop.
            connections: open loop: connection pool size (default ``users``, so switching a
                suite's mode keeps its connection count).
            distribution: open loop: ``"constant"`` or ``"poisson"`` arrivals.

        Returns:
            The :class:`LoadResult` (latencies in µs); in a dry run
            :meth:`~meshlab.load.result.LoadResult.not_measured`.

        Raises:
            ConfigError: a bad load option (names the field), or ``jobs`` on an env without
                Jobs.
            LabError: the load runner failed.
        """
        spec = self._spec(name, url, users, rate_per_s, duration_s, max_requests, timeout_s,
                          processes, mode, connections, distribution)
        out_path = self.journal.dir / f"load-{name}.json"
        if jobs and not isinstance(self.env, LoadJobs):
            raise ConfigError(f"load {name!r}: jobs=True needs an env that runs Jobs (kube); "
                              f"the {self.env.name} env runs processes=N in the client pod")
        shell = None if jobs else self.env.pod_shell(from_pod or self.client)
        with self.journal.activity(f"load:{name}") as rec:
            if jobs:
                result = run_load_jobs(self.env, from_pod or self.client, spec, out_path)
            else:
                result = run_load(shell, spec, out_path)
            rec["output"] = result.summary()
        self.journal.add_load(name, result.to_dict())
        return result

    @contextmanager
    def background_load(self, name: str, url: str, *, users: int = 4,
                        rate_per_s: float | None = None, duration_s: float = 5.0,
                        timeout_s: float = 10.0, from_pod: str | None = None,
                        processes: int = 1, mode: str | None = None,
                        connections: int | None = None, distribution: str = "constant"
                        ) -> Iterator[LoadHandle]:
        """Run a load in the background for the block (e.g. while a fault is active); the
        result is journaled when the block ends (the load is waited for, or stopped on error).
        With ``processes`` > 1 the handle is a :class:`~meshlab.load.group.LoadGroup`; the
        other options are those of :meth:`load`."""
        spec = self._spec(name, url, users, rate_per_s, duration_s, None, timeout_s, processes,
                          mode, connections, distribution)
        shell = self.env.pod_shell(from_pod or self.client)
        with self.journal.activity(f"load:{name}") as rec:
            handle = start_load(shell, spec, self.journal.dir / f"load-{name}.json")
            try:
                yield handle
            except BaseException:
                handle.stop()
                raise
            result = handle.wait()
            rec["output"] = result.summary()
        self.journal.add_load(name, result.to_dict())

    def fault(self, fault: Fault, max_duration_s: float | None = None) -> Any:
        """Context manager: ``fault`` is active inside the block and always reverted after
        (by its deadman once ``max_duration_s`` passes, even if the block is still running)."""
        return active(fault, self.env, self.journal, max_duration_s=max_duration_s)

    def observe(self, name: str, kind: str, data: Any, **meta: Any) -> Any:
        """Record an observation in the journal (:meth:`RunJournal.add_observation`) and
        return ``data``."""
        self.journal.add_observation(name, kind, data, **meta)
        return data

    def observation(self, name: str) -> Any:
        """The data of observation ``name`` recorded in this run.

        Raises:
            KeyError: no observation of that name (the recorded ones are named).
        """
        found = self.journal.data["observations"]
        if name not in found:
            raise KeyError(f"no observation {name!r} in this run (recorded: {sorted(found)})")
        return found[name]["data"]

    def load_record(self, name: str) -> dict[str, Any]:
        """The journaled result of load ``name`` (:meth:`LoadResult.to_dict` form).

        Raises:
            KeyError: no load of that name ran in this run.
        """
        for record in self.journal.data["loads"]:
            if record.get("name") == name:
                return record
        raise KeyError(f"no load {name!r} in this run "
                       f"(ran: {[r.get('name') for r in self.journal.data['loads']]})")

    def note(self, text: str) -> None:
        """Add a line to the run's notes (top of the report): what a reviewer should know."""
        self.journal.add_note(text)

    # the lab, as a suite sees it ---------------------------------------------------------
    @cached_property
    def names(self) -> LabNames:
        """The lab's names from its topology: pods, namespace, FQDNs, Envoy cluster names."""
        return LabNames(self.env)

    def collect_sidecars(self) -> dict[str, Any]:
        """Read every sidecar's new access-log lines into ``journal["sidecars"]``.

        Returns:
            ``{pod: {"response_flags": {cluster: {flags: n}}, "response_codes": {...},
            "requests": n, "access_log_sample": [lines]}}``.
        """
        out: dict[str, Any] = {}
        for pod, mark in self._log_marks.items():
            lines = self.env.access_log_lines(pod)[mark:]
            records = parse_lines(lines)
            out[pod] = {"response_flags": flags_by_cluster(records),
                        "response_codes": codes_by_cluster(records), "requests": len(records),
                        "access_log_sample": lines[:ACCESS_LOG_SAMPLE // 2]
                        + lines[-ACCESS_LOG_SAMPLE // 2:] if len(lines) > ACCESS_LOG_SAMPLE
                        else lines}
        self.journal.data["sidecars"] = out
        self.journal.save()
        return out

    def settle(self, timeout_s: float = 10.0, every_s: float = 0.1) -> dict[str, int]:
        """Wait until the lab is quiet: no sidecar has a request in flight (every
        ``*rq_active`` stat is 0) and no socket of any pod still holds work (``ss``): none
        established or still handshaking (:data:`DELIVERING`; a SYN retransmitted under packet
        loss connects seconds later) with a send queue or a retransmit timer, none with unread
        received data, no listener with connections not yet accepted. Stragglers of this run —
        a request stuck behind retransmissions, one still waiting in the receiver's queue, a
        late reset — are then logged here and not in the next run's access-log window.

        Returns:
            ``{pod: requests + sockets}`` still busy when ``timeout_s`` ran out (empty: all
            quiet). Never raises for an unreachable pod (a powered-off node): it is skipped.
        """
        from meshlab.collectors.sockets import snapshot
        from meshlab.polling import PollTimeout, wait_until

        def busy() -> dict[str, int]:
            out: dict[str, int] = {}
            for pod in self.env.pods():
                active = 0
                try:
                    if pod.name in self._log_marks:
                        text = self.env.sidecar_admin(pod.name, stats_path("rq_active$"))
                        active = sum(v for _, v in stat_ints(text, ":", newline="\n",
                                                             strip=True, signed=False))
                    active += sum(1 for s in snapshot(self.env.pod_shell(pod.name))
                                  if s.recv_q or (s.state in DELIVERING
                                                  and (s.send_q or s.timer == "on")))
                except MeshlabError:
                    continue
                if active:
                    out[pod.name] = active
            return out

        try:
            return wait_until(busy, lambda b: not b, timeout_s=timeout_s, every_s=every_s)
        except PollTimeout:
            left = busy()
            if left:
                self.journal.data["notes"].append(f"requests still in flight at the end: {left}")
            return left

    def start_collectors(self, interval_s: float = 1.0) -> Sampler:
        """Start the background collectors (idempotent: a running sampler is returned as is):
        every target sampled each ``interval_s`` into ``<run>/series/*.jsonl`` and
        ``journal["collectors"]`` written (docs/CONTRACTS.md §5).

        Raises:
            ConfigError: ``interval_s`` is not a positive number.
        """
        if self._sampler is not None:
            return self._sampler
        sampler = Sampler(self.env, self.journal.dir, interval_s)
        self._sampler = sampler.start()
        self.journal.data["notes"].extend(sampler.notes)
        self.journal.data["collectors"] = sampler.summary()
        self.journal.save()
        return sampler

    def stop_collectors(self) -> None:
        """Stop the collectors after a last sample and journal their counts (idempotent)."""
        if self._sampler is None or self._sampler.ended_epoch_s is not None:
            return
        self._sampler.stop()
        self.journal.data["collectors"] = self._sampler.summary()
        self.journal.save()

    def query_prometheus(self, client: Any = None) -> dict[str, Any]:
        """Evaluate the named Prometheus queries (:mod:`meshlab.collectors.prometheus`: request
        counts by pod/reporter and by response flags, sidecar CPU seconds and memory) over this
        run, from its start until now, into ``journal["prometheus"]`` (CONTRACTS.md §5).

        Args:
            client: a :class:`~meshlab.envs.prometheus_api.PrometheusClient`; default
                ``env.prometheus()`` (the local lab's server, or a cluster's configured URL).

        Returns:
            What was recorded; a failed query is in its ``error`` (this never raises for a
            query, only if ``env.prometheus()`` itself cannot build a client).
        """
        from meshlab.collectors.prometheus import record

        return record(self.journal, client or self.env.prometheus(), self.started_epoch_s,
                      time.time())

    def check(self, *checks: Check) -> list[Verdict]:
        """Refresh sidecar data, evaluate every check and journal the verdicts (in a dry run:
        journal each as not evaluated, :func:`~meshlab.checks.base.record_not_evaluated`).

        Raises:
            SystemUnderTestError: one or more checks failed (an AssertionError listing each).
        """
        self.collect_sidecars()
        try:
            if self.dry_run:
                return record_not_evaluated(self.journal.data, checks)
            return assert_all(self.journal.data, checks)
        finally:
            self.journal.save()

    def finish(self, status: str) -> Path:
        """Collect sidecar data, close the journal with ``status`` and render the report.

        Returns:
            The ``report.html`` path.
        """
        from meshlab.report.render import render_report

        self.stop_collectors()
        try:
            self.collect_sidecars()
        except (MeshlabError, OSError) as exc:  # the env may be gone: keep the rest
            self.journal.data["notes"].append(f"sidecar data not collected: {exc}")
        self.journal.finish(status)
        return render_report(self.journal.dir)
