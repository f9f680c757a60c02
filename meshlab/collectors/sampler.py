"""The run's background collectors: every target sampled each ``interval_s`` into JSONL series.

Targets (docs/CONTRACTS.md §5): each meshed pod's sidecar ``/stats``
(:class:`~meshlab.collectors.envoy_stats.EnvoyStatsTarget`) and access log
(:class:`~meshlab.collectors.accesslog.AccessLogTarget`), each pod's sockets
(:class:`~meshlab.collectors.sockets.SocketsTarget`), the conntrack table of every pod and
node network namespace (:class:`~meshlab.collectors.conntrack.ConntrackTarget`), and, on an env
with container cgroups (:class:`~meshlab.envs.capabilities.Containers`), each pod's containers' CPU,
throttling and memory (:class:`~meshlab.collectors.containers.ContainersTarget`), and, on an env
with a cluster DNS it counts (:class:`~meshlab.envs.capabilities.ClusterDns`), each pod's kube-dns
queries (:class:`~meshlab.collectors.dns.DnsQueriesTarget`). On an env whose
namespaces are on this machine (:class:`~meshlab.envs.capabilities.LocalNamespaces`: the local lab)
sockets and conntrack are read over netlink sockets kept open inside each namespace
(:mod:`~meshlab.collectors.sock_diag`, :mod:`~meshlab.collectors.ctnetlink`); elsewhere (kube)
``ss`` / ``conntrack`` run through the env's shells. A target is
anything with ``series`` (the file key), ``name`` (the lines' ``target``) and ``read() -> dict |
None`` (the data keys; None writes nothing).

A scheduler thread ticks on a fixed grid and hands each target's read to a small thread pool,
so one slow target (an admin call timing out) never holds back the others: a target whose
previous read is still running skips that tick (counted in ``skipped``); ticks the scheduler
itself missed are dropped, never caught up (counted in ``overruns``). A read that raises writes a
gap line and sampling goes on; nothing the targets do reaches the caller. Each line is flushed as
it is written, so a ``kill -9``'d run keeps its series. The scheduler and reader threads run at
``SCHED_IDLE`` (nice 19 if refused, :mod:`meshlab.envs.idle`): observing never takes CPU
the data path wants.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import IO, Any, Protocol, Self

from meshlab.collectors.accesslog import AccessLogTarget
from meshlab.collectors.conntrack import ConntrackCommand, ConntrackReader, ConntrackTarget
from meshlab.collectors.containers import ContainersTarget
from meshlab.collectors.ctnetlink import CtnetlinkReader
from meshlab.collectors.dns import DnsQueriesTarget
from meshlab.collectors.envoy_stats import EnvoyStatsTarget
from meshlab.collectors.sock_diag import SockDiagReader
from meshlab.collectors.sockets import SocketReader, SocketsTarget, SsReader
from meshlab.envs.base import Env
from meshlab.envs.capabilities import ClusterDns, Containers, LocalNamespaces
from meshlab.envs.idle import make_thread_idle
from meshlab.errors import ConfigError, MeshlabError

#: Series file keys, in the journal's order.
SERIES = ("envoy_stats", "accesslog", "sockets", "conntrack", "containers", "dns")
SERIES_DIR = "series"
MAX_GAP_CHARS = 300


class Target(Protocol):
    """One thing the sampler reads every tick."""

    series: str
    name: str

    def read(self) -> dict[str, Any] | None:
        """The line's data keys, or None for no line this tick; raises when the read fails."""
        ...


def kernel_readers(env: Env, kind: str, name: str) -> tuple[SocketReader, ConntrackReader]:
    """The socket and conntrack readers of pod or node ``name`` (``kind`` ``pod``|``node``).

    Netlink readers inside the namespace when the env has its namespaces on this machine
    (:class:`~meshlab.envs.capabilities.LocalNamespaces`, ``netns_of(kind, name)``; its
    ``kernel_reads`` is ``netlink``), else ``ss`` / ``conntrack -L`` through ``env.pod_shell`` /
    ``env.node_shell``.

    Raises:
        MeshlabError: no such pod or node.
    """
    if isinstance(env, LocalNamespaces):
        netns = env.netns_of(kind, name)
        return SockDiagReader(netns), CtnetlinkReader(netns)
    shell = env.pod_shell(name) if kind == "pod" else env.node_shell(name)
    return SsReader(shell), ConntrackCommand(shell)


def default_targets(env: Env) -> tuple[list[Target], list[str]]:
    """Every target of ``env`` (see the module docstring) and notes on what was left out.

    Never raises: a part that cannot be set up is left out with a note.
    """
    targets: list[Target] = []
    notes: list[str] = []
    try:
        pods = list(env.pods())
    except (MeshlabError, OSError) as exc:
        return [], [f"collectors: no pods listed, nothing sampled: {exc}"]
    for pod in pods:
        try:
            if pod.meshed:
                targets += [EnvoyStatsTarget(env, pod.name), AccessLogTarget(env, pod.name)]
            sockets, conntrack = kernel_readers(env, "pod", pod.name)
            targets += [SocketsTarget(sockets, pod.name),
                        ConntrackTarget(conntrack, pod.name, "pod")]
            if isinstance(env, Containers):
                targets.append(ContainersTarget(env, pod.name))
        except (MeshlabError, OSError) as exc:
            notes.append(f"collectors: pod {pod.name} not sampled: {exc}")
    if isinstance(env, ClusterDns):
        targets.append(DnsQueriesTarget(env))
    for node in _node_names(env, pods):
        try:
            targets.append(ConntrackTarget(kernel_readers(env, "node", node)[1], node, "node"))
        except (MeshlabError, OSError) as exc:
            notes.append(f"collectors: node {node} conntrack not sampled: {exc}")
    return targets, notes


def _node_names(env: Env, pods: list[Any]) -> list[str]:
    try:
        nodes = [n["name"] for n in env.describe().get("topology", {}).get("nodes", [])]
    except (MeshlabError, OSError, AttributeError, KeyError, TypeError):
        nodes = []
    return nodes or sorted({p.node for p in pods})


class Sampler:
    """Samples targets into ``<run_dir>/series/<series>.jsonl`` until stopped.

    Args:
        env: the env (used for :func:`default_targets` when ``targets`` is None; may be None
            when ``targets`` are given).
        run_dir: the run folder (``results.json``'s folder).
        interval_s: seconds between ticks (> 0).
        targets: what to read (default: :func:`default_targets`).
        max_workers: reads running at the same time.

    Attributes:
        notes: what was left out when the targets were set up.
        samples, gaps, skipped: per series, data lines, gap lines and reads skipped because
            the target's previous read was still running.
        overruns: ticks the scheduler missed (dropped, not caught up).
        ticks: ticks started.
        priorities: ``{thread name: "idle" | "nice19" | "unchanged"}`` of the sampler's
            threads (:func:`~meshlab.envs.idle.make_thread_idle`).

    Raises:
        ConfigError: ``interval_s`` is not a positive number, or neither ``env`` nor
            ``targets`` is given.
    """

    def __init__(self, env: Env | None, run_dir: Path | str, interval_s: float = 1.0,
                 targets: list[Target] | None = None, max_workers: int = 4) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, int | float) \
                or not interval_s > 0 or interval_s == float("inf"):
            raise ConfigError(f"Sampler.interval_s: must be > 0 seconds, got {interval_s!r}")
        self.env = env
        self.dir = Path(run_dir) / SERIES_DIR
        self.interval_s = float(interval_s)
        self.notes: list[str] = []
        if targets is None:
            if env is None:
                raise ConfigError("Sampler: needs an env or explicit targets")
            targets, self.notes = default_targets(env)
        self.targets: list[Target] = list(targets)
        self.samples: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.overruns = 0
        self.ticks = 0
        self.priorities: dict[str, str] = {}
        self.started_epoch_s: float | None = None
        self.ended_epoch_s: float | None = None
        self._max_workers = max_workers
        self._files: dict[str, IO[str]] = {}
        self._lock = threading.Lock()
        self._busy: dict[int, Future[None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return (f"Sampler(dir={str(self.dir)!r}, interval_s={self.interval_s}, "
                f"targets={len(self.targets)}, ticks={self.ticks}, running={self.running})")

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def files(self) -> dict[str, str]:
        """``{series: path relative to the run folder}``."""
        return {s: f"{SERIES_DIR}/{s}.jsonl" for s in SERIES}

    def summary(self) -> dict[str, Any]:
        """The journal's ``collectors`` object (docs/CONTRACTS.md §5)."""
        with self._lock:
            return {"interval_s": self.interval_s, "started_epoch_s": self.started_epoch_s,
                    "ended_epoch_s": self.ended_epoch_s, "files": self.files(),
                    "samples": {s: self.samples[s] for s in SERIES},
                    "gaps": {s: self.gaps[s] for s in SERIES},
                    "skipped": {s: self.skipped[s] for s in SERIES},
                    "overruns": self.overruns, "ticks": self.ticks,
                    "targets": len(self.targets)}

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Open the series files (append) and start sampling (once: a no-op afterwards)."""
        if self._thread is not None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files = {s: open(self.dir / f"{s}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
                       for s in SERIES}  # closed by stop()
        self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="collector",
                                        initializer=self._idle_thread)
        self.started_epoch_s = time.time()
        self._thread = threading.Thread(target=self._loop, name="collectors", daemon=True)
        self._thread.start()
        return self

    def stop(self, final_sample: bool = True, timeout_s: float = 15.0) -> None:
        """Stop sampling (idempotent): one last tick unless ``final_sample`` is false, reads
        still running are waited for up to ``timeout_s``, then the files are closed (a read
        finishing later writes nothing)."""
        if self._thread is None or self._pool is None or self.ended_epoch_s is not None:
            return
        self._stop.set()
        self._thread.join()
        if final_sample:
            self._tick()
        with self._lock:
            pending = list(self._busy.values())
        wait_futures(pending, timeout=timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for target in self.targets:
            close = getattr(target, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001, S110 - closing is best effort
                    pass
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files = {}
            self.ended_epoch_s = time.time()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # sampling --------------------------------------------------------------------------
    def _idle_thread(self) -> None:
        """Run the calling sampler thread at idle CPU priority; remember what it got."""
        got = make_thread_idle()
        with self._lock:
            self.priorities[threading.current_thread().name] = got

    def _loop(self) -> None:
        self._idle_thread()
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._tick()
            next_t += self.interval_s
            late = time.monotonic() - next_t
            if late > 0:  # the scheduler itself fell behind: drop the missed ticks
                missed = int(late // self.interval_s) + 1
                with self._lock:
                    self.overruns += missed
                next_t += missed * self.interval_s
            self._stop.wait(next_t - time.monotonic())

    def _tick(self) -> None:
        """Start one read per idle target; a target still busy skips this tick."""
        if self._pool is None:
            return
        with self._lock:
            self.ticks += 1
            for i, target in enumerate(self.targets):
                if i in self._busy:
                    self.skipped[target.series] += 1
                    continue
                try:
                    self._busy[i] = self._pool.submit(self._read, i, target)
                except RuntimeError:  # the pool is shutting down
                    return

    def _read(self, index: int, target: Target) -> None:
        t = time.time()
        try:
            data = target.read()
            line = None if data is None else {"t": round(t, 3), "target": target.name, **data}
        except Exception as exc:  # noqa: BLE001 - any failure is a gap, never the run's error
            line = {"t": round(t, 3), "target": target.name,
                    "gap": f"{type(exc).__name__}: {exc}"[:MAX_GAP_CHARS]}
        try:
            if line is not None:
                self._write(target.series, line, "gap" in line)
        finally:
            with self._lock:
                self._busy.pop(index, None)

    def _write(self, series: str, line: dict[str, Any], gap: bool) -> None:
        text = json.dumps(line, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            f = self._files.get(series)
            if f is None:  # stopped meanwhile
                return
            f.write(text)
            f.flush()
            (self.gaps if gap else self.samples)[series] += 1
