"""The state one ``chaos run`` process keeps between activities: the env, the meshlab run
journal, the active faults and the loads.

Chaos Toolkit calls each python activity as a plain function in the same process, so what an
action starts (a fault, a background load) is kept here, in a module-level :class:`Session`,
until a later action (or a rollback, or :mod:`meshlab.control <meshlab.chaostoolkit.control>`'s
cleanup) ends it. Every fault also has a ledger entry and a deadman
(:func:`meshlab.faults.base.start`), so it is reverted even if this process dies.

The experiment's ``configuration`` picks the lab (all optional)::

    meshlab_env          "local" (network-namespace lab) or "kube" (a cluster with Istio)
    meshlab_lab          lab name, default "lab" (local netns ml-<lab>-…; kube labels)
    meshlab_overlays     ["ha-l2", ...] over the base manifests (a list, or "a,b" as a string)
    meshlab_manifests    base manifests folder, default manifests/fortio-layered
    meshlab_reports      reports folder, default "reports"
    meshlab_kube_config  kube: the settings YAML (namespace, allow-list, guardrails; KUBE.md)
    meshlab_dry_run      kube: print every manifest and command, send nothing (default false)
    meshlab_interval     collectors' sampling interval in seconds (default 0: off)

A local lab must already be up with exactly these manifests (``meshlab up --lab <lab> --overlay
<name>``); a mismatch is a :class:`~meshlab.errors.LabError` before anything is injected. A kube
lab is applied into the settings' namespace when the session starts (idempotent, through the
same guardrails as a suite: allowed namespace, opted-in nodes, blast radius) and left there.
The run goes through :class:`~meshlab.experiment.lifecycle.RunLifecycle`, like a suite's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlab.chaostoolkit import clients
from meshlab.envs.ledger import fault_params
from meshlab.errors import ConfigError, LabError
from meshlab.experiment.lifecycle import RunLifecycle, RunOptions
from meshlab.experiment.run import DEFAULT_CLIENT
from meshlab.faults.base import start, stop
from meshlab.faults.protocol import Fault
from meshlab.faults.registry import create
from meshlab.journal import RunJournal
from meshlab.load.driver import LoadHandle, LoadResult
from meshlab.load.spec import LoadSpec
from meshlab.load.start import run_load, start_load

DEFAULTS: dict[str, Any] = {"meshlab_env": "local", "meshlab_lab": "lab",
                            "meshlab_overlays": [], "meshlab_manifests": None,
                            "meshlab_reports": "reports", "meshlab_kube_config": None,
                            "meshlab_dry_run": False, "meshlab_interval": 0}
DEFAULT_RUN_NAME = "chaostoolkit"


def env_spec(configuration: dict[str, Any] | None) -> dict[str, Any]:
    """What the configuration asks for: the env, the lab and its manifests.

    Returns:
        ``{"env": "local"|"kube", "lab": str, "manifests": [absolute folder, ...],
        "kube_config": str|None, "dry_run": bool, "interval_s": float}``.

    Raises:
        ConfigError: an unknown env, an unknown overlay, a kube-only key on the local env, a
            bad interval (names the key).
    """
    from meshlab.envs.factory import ENVS
    from meshlab.envs.manifest_sets import manifest_set

    cfg = {**DEFAULTS, **(configuration or {})}
    which = cfg["meshlab_env"]
    if which not in ENVS:
        raise ConfigError(f"configuration.meshlab_env: must be one of {', '.join(ENVS)}, got "
                          f"{which!r}")
    overlays = cfg["meshlab_overlays"] or []
    if isinstance(overlays, str):
        overlays = [o.strip() for o in overlays.split(",") if o.strip()]
    if not isinstance(overlays, list):
        raise ConfigError(f"configuration.meshlab_overlays: expected a list of overlay names, "
                          f"got {overlays!r}")
    dry_run = cfg["meshlab_dry_run"]
    if not isinstance(dry_run, bool):
        dry_run = str(dry_run).lower() in ("1", "true", "yes", "on")
    if which == "local" and (dry_run or cfg["meshlab_kube_config"]):
        raise ConfigError("configuration.meshlab_dry_run/meshlab_kube_config: only with "
                          "meshlab_env 'kube' (the local lab has no dry run)")
    try:
        interval_s = float(cfg["meshlab_interval"])
    except (TypeError, ValueError):
        interval_s = -1.0
    if interval_s < 0:
        raise ConfigError(f"configuration.meshlab_interval: must be >= 0 seconds, got "
                          f"{cfg['meshlab_interval']!r}")
    folders = manifest_set(cfg["meshlab_manifests"], overlays)
    kube_config = cfg["meshlab_kube_config"]
    return {"env": which, "lab": str(cfg["meshlab_lab"]),
            "manifests": [str(p) for p in folders],
            "kube_config": str(kube_config) if kube_config else None, "dry_run": dry_run,
            "interval_s": interval_s}


def _check_local_up(spec: dict[str, Any]) -> None:
    from meshlab.envs.local.state import LabState
    from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS, OVERLAYS_ROOT

    state = LabState.load(spec["lab"])
    base, *overlays = spec["manifests"]
    cmd = ["meshlab", "up", "--lab", spec["lab"]]
    cmd += [] if Path(base) == DEFAULT_MANIFESTS else ["--manifests", base]
    cmd += [arg for o in overlays for arg in
            ("--overlay", Path(o).name if Path(o).parent == OVERLAYS_ROOT else o)]
    hint = f"run '{' '.join(cmd)}' first"
    if state is None or state.status != "up":
        raise LabError(f"lab {spec['lab']!r} is not up: {hint}")
    if [str(Path(m).resolve()) for m in state.manifests] != spec["manifests"]:
        raise LabError(f"lab {spec['lab']!r} is up with manifests {state.manifests}, the "
                       f"experiment asks for {spec['manifests']}: {hint}")


@dataclass
class ActiveFault:
    """A fault injected by ``inject_fault`` and not reverted yet.

    Attributes:
        fault: the fault object (its fields hold what revert needs).
        entry: its :class:`~meshlab.envs.ledger.LedgerEntry` (None without ledger).
        started_epoch_s: when the inject began (start of the report's fault window).
    """

    fault: Fault
    entry: Any
    started_epoch_s: float


class Session:
    """One experiment's env, meshlab run and live faults/loads.

    Args:
        spec: the env spec (:func:`env_spec`).
        reports: the reports folder for the meshlab run journal.
        name: the run's name (the experiment title when the control is declared).

    Raises:
        LabError: the lab is not up with the spec's manifests.
    """

    def __init__(self, spec: dict[str, Any], reports: Path, name: str) -> None:
        from meshlab.envs.factory import build_env
        from meshlab.experiment.labs import lab_up

        self.spec = spec
        self.env = build_env(spec["env"], spec["manifests"], spec["lab"],
                             kube_config=spec["kube_config"], dry_run=spec["dry_run"])
        if spec["env"] == "local":
            _check_local_up(spec)
        else:
            lab_up(self.env)  # applies the lab through the guardrails (a dry run prints it)
        self.life = RunLifecycle(self.env, RunJournal(reports, name),
                                 RunOptions(interval_s=spec["interval_s"],
                                            dry_run=spec["dry_run"]))
        self.run = self.life.open()
        self.faults: dict[str, ActiveFault] = {}
        self.loads: dict[str, LoadHandle] = {}
        self.results: dict[str, LoadResult] = {}
        self.clients: dict[str, clients.ClientGroup] = {}
        self.client_results: dict[str, list[dict[str, Any]]] = {}
        self._seen: dict[str, int] = {}

    def __repr__(self) -> str:
        return (f"Session(lab={self.spec['lab']!r}, faults={sorted(self.faults)}, "
                f"loads={sorted(self.loads)}, run={self.run.journal!r})")

    @property
    def journal(self) -> RunJournal:
        """The meshlab run journal (``results.json`` under ``meshlab_reports``)."""
        return self.run.journal

    def unique(self, name: str) -> str:
        """``name`` the first time, then ``name-2``, ``name-3``… (journal keys stay unique)."""
        self._seen[name] = self._seen.get(name, 0) + 1
        return name if self._seen[name] == 1 else f"{name}-{self._seen[name]}"

    # faults ------------------------------------------------------------------------------
    def inject(self, key: str, name: str, params: dict[str, Any],
               max_duration_s: float | None) -> tuple[ActiveFault, str]:
        """Inject fault ``name`` under ``key`` (ledger entry + deadman).

        Raises:
            ConfigError: unknown fault, bad parameters, or ``key`` already active.
        """
        if key in self.faults:
            raise ConfigError(f"fault {key!r} is already active: revert it first "
                              "(or give the second one another 'key')")
        fault = create(name, **(params or {}))
        t0 = time.time()
        with self.journal.activity(f"inject:{name}") as rec:
            entry, rec["output"] = start(fault, self.env, max_duration_s)
        active = ActiveFault(fault, entry, t0)
        self.faults[key] = active
        return active, str(rec["output"])

    def revert(self, key: str) -> dict[str, Any] | None:
        """Revert the fault under ``key``; None when none is active (idempotent).

        The fault stays in :attr:`faults` if its revert raised, so a later call retries it.

        Returns:
            ``{"output", "reverted_by", "active_s"}``.
        """
        active = self.faults.get(key)
        if active is None:
            return None
        with self.journal.activity(f"revert:{active.fault.name}") as rec:
            rec["output"], last = stop(active.fault, self.env, active.entry)
        del self.faults[key]
        by = (last or {}).get("reverted_by") or "runner"
        end = float((last or {}).get("reverted_epoch_s") or time.time())
        self.journal.add_fault_window(active.fault.name, active.started_epoch_s, end,
                                      fault_params(active.fault))
        return {"output": rec["output"], "reverted_by": by,
                "active_s": round(end - active.started_epoch_s, 3)}

    # loads -------------------------------------------------------------------------------
    def start_load(self, name: str, spec: LoadSpec, from_pod: str | None) -> LoadHandle:
        """Start a background Locust load in the client pod.

        Raises:
            ConfigError: a load of that name is still running.
            LabError: the runner could not be started.
        """
        if name in self.loads:
            raise ConfigError(f"load {name!r} is already running")
        shell = self.env.pod_shell(from_pod or DEFAULT_CLIENT)
        with self.journal.activity(f"start-load:{name}") as rec:
            out = self.journal.dir / f"load-{self.unique(name)}.json"
            handle = start_load(shell, spec, out)
            rec["output"] = f"{spec.users} users → {spec.url} for {spec.duration_s} s"
        self.loads[name] = handle
        return handle

    def finish_load(self, name: str, wait: bool) -> LoadResult | None:
        """Wait for (``wait``) or stop the background load ``name`` and journal its result.

        Returns:
            The result, the earlier result if it was already finished, or None if no load of
            that name was started.

        Raises:
            LabError: the runner failed or wrote no result.
        """
        handle = self.loads.pop(name, None)
        if handle is None:
            return self.results.get(name)
        with self.journal.activity(f"{'wait' if wait else 'stop'}-load:{name}") as rec:
            result = handle.wait() if wait else handle.stop()
            rec["output"] = f"{result.requests} requests, {result.tps:.1f} TPS"
        self._keep(name, result, journaled_as=handle.out_path.stem.removeprefix("load-"))
        return result

    def probe_load(self, spec: LoadSpec, from_pod: str | None) -> LoadResult:
        """Run a short load to completion now (a steady-state probe) and journal it."""
        journal_name = self.unique(spec.name)
        shell = self.env.pod_shell(from_pod or DEFAULT_CLIENT)
        with self.journal.activity(f"load:{journal_name}") as rec:
            result = run_load(shell, spec, self.journal.dir / f"load-{journal_name}.json")
            rec["output"] = f"{result.requests} requests, {result.tps:.1f} TPS"
        self._keep(spec.name, result, journaled_as=journal_name)
        return result

    def _keep(self, name: str, result: LoadResult, journaled_as: str) -> None:
        result.name = journaled_as
        self.journal.add_load(journaled_as, result.to_dict())
        self.results[name] = result

    # TCP app clients ---------------------------------------------------------------------
    def start_clients(self, name: str, pod: str, connect: str, count: int,
                      **opts: Any) -> clients.ClientGroup:
        """Start a group of TCP app clients in ``pod`` (:func:`clients.start`).

        Raises:
            ConfigError: a group of that name is still running, or a bad option.
        """
        if name in self.clients:
            raise ConfigError(f"TCP clients {name!r} are already running")
        with self.journal.activity(f"start-tcp-clients:{name}") as rec:
            group = clients.start(self.env.pod_shell(pod), name, connect, count,
                                  self.journal.dir, **opts)
            rec["output"] = f"{count} client(s) in {pod} → {connect}"
        self.clients[name] = group
        return group

    def finish_clients(self, name: str, wait: bool) -> list[dict[str, Any]] | None:
        """Wait for or stop the client group ``name``; its results (None if never started)."""
        group = self.clients.pop(name, None)
        if group is None:
            return self.client_results.get(name)
        with self.journal.activity(f"{'wait' if wait else 'stop'}-tcp-clients:{name}") as rec:
            results = clients.finish(group, wait)
            rec["output"] = clients.summarize(results)
        self.journal.add_observation(f"tcp-clients:{name}", "tcp_clients", results, pod=group.pod)
        self.client_results[name] = results
        return results

    def observe(self, kind: str, name: str, value: Any, **meta: Any) -> Any:
        """Record a probe's value as a journal observation (``<kind>:<name>[-n]``)."""
        self.journal.add_observation(self.unique(f"{kind}:{name}"), kind, value, **meta)
        return value

    # end ---------------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Revert every fault still active and stop every load still running (the safety net
        for rollbacks that did not run); errors are collected, not raised.

        Returns:
            One line per thing ended, prefixed ``error:`` when it failed.
        """
        lines = []
        for key in list(self.faults):
            try:
                lines.append(f"fault {key}: {(self.revert(key) or {}).get('output')}")
            except Exception as exc:  # noqa: BLE001 - keep cleaning; the deadman retries
                lines.append(f"error: fault {key}: {type(exc).__name__}: {exc}")
        for name in list(self.loads):
            try:
                self.finish_load(name, wait=False)
                lines.append(f"load {name}: stopped")
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                lines.append(f"error: load {name}: {type(exc).__name__}: {exc}")
        for name in list(self.clients):
            self.finish_clients(name, wait=False)
            lines.append(f"tcp clients {name}: stopped")
        return lines

    def close(self, status: str) -> Path:
        """End the run (:meth:`RunLifecycle.close`: settle, stop the collectors, finish) with
        ``status`` and return its ``report.html``; a dry run ends as ``skipped`` (nothing was
        sent, so nothing was measured)."""
        if self.spec["dry_run"]:
            self.journal.data["notes"].append("dry run: every manifest and command printed, "
                                              "nothing sent")
            status = "skipped"
        return self.life.close(status).report


_LOCK = threading.RLock()
_CURRENT: Session | None = None
_NAME = DEFAULT_RUN_NAME


def current(configuration: dict[str, Any] | None) -> Session:
    """The session for this configuration, created on first use.

    Raises:
        ConfigError: bad configuration, or another lab while faults/loads are still live.
        LabError: the lab is not up with the requested manifests.
    """
    global _CURRENT
    spec = env_spec(configuration)
    with _LOCK:
        if _CURRENT is not None and _CURRENT.spec != spec:
            if _CURRENT.faults or _CURRENT.loads or _CURRENT.clients:
                raise ConfigError(f"configuration asks for lab {spec['lab']!r} while "
                                  f"{_CURRENT!r} still has live faults/loads")
            _CURRENT = None
        if _CURRENT is None:
            reports = Path(str({**DEFAULTS, **(configuration or {})}["meshlab_reports"]))
            _CURRENT = Session(spec, reports, _NAME)
        return _CURRENT


def begin(name: str, configuration: dict[str, Any] | None) -> Session:
    """Start a fresh session named ``name`` (the control calls it when the experiment starts).

    Raises:
        ConfigError: a previous session still has live faults/loads in this process.
    """
    global _CURRENT, _NAME
    with _LOCK:
        if _CURRENT is not None and (_CURRENT.faults or _CURRENT.loads or _CURRENT.clients):
            raise ConfigError(f"{_CURRENT!r} still has live faults/loads")
        _CURRENT, _NAME = None, name or DEFAULT_RUN_NAME  # kept even if current() raises
        return current(configuration)


def peek() -> Session | None:
    """The current session without creating one."""
    return _CURRENT


def end() -> Session | None:
    """Forget the current session (after its cleanup) and return it."""
    global _CURRENT, _NAME
    with _LOCK:
        done, _CURRENT, _NAME = _CURRENT, None, DEFAULT_RUN_NAME
        return done
