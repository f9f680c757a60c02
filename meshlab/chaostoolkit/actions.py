"""Chaos Toolkit actions: inject/revert meshlab faults, start/stop background load.

Use them as python providers (``"module": "meshlab.chaostoolkit.actions"``); each one receives
the experiment's ``configuration`` (lab selection, :mod:`meshlab.chaostoolkit.session`) and
returns a JSON-ready dict that Chaos Toolkit stores as the activity's ``output``.

Faults are the registered meshlab faults (:data:`meshlab.faults.registry.FAULTS`):
``reject-connections``, ``node-poweroff``, ``packet-drop``, ``half-close``,
``conntrack-delete``, ``conntrack-timeouts`` and any other module in :mod:`meshlab.faults`. An injected fault stays
active across activities and is reverted by ``revert_fault`` (in the method or a rollback), by
the control's cleanup when rollbacks did not run, or by its deadman after ``max_duration_s``
if the ``chaos`` process died. Loads run Locust in the client pod (as
:meth:`meshlab.experiment.Run.background_load`) and are journaled in a meshlab run, so
``report.html`` is rendered next to ``results.json`` under ``meshlab_reports``.
"""

from __future__ import annotations

from typing import Any

from meshlab.chaostoolkit import clients, session
from meshlab.load.driver import LoadResult
from meshlab.load.spec import LoadSpec

__all__ = ["inject_fault", "revert_fault", "start_load", "start_tcp_clients", "stop_load",
           "stop_tcp_clients"]


def inject_fault(name: str, params: dict[str, Any] | None = None,
                 max_duration_s: float | None = None, key: str | None = None,
                 configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inject a meshlab fault and leave it active (until ``revert_fault`` or its deadman).

    Args:
        name: registered fault name, e.g. ``"packet-drop"``.
        params: the fault's parameters, e.g. ``{"target": "fortio-server-0",
            "probability": 0.5, "direction": "egress"}``.
        max_duration_s: the deadman reverts the fault after this many seconds even if the
            experiment is still running or dead (default: the fault's own maximum, else
            :data:`~meshlab.faults.protocol.DEFAULT_MAX_DURATION_S`).
        key: the handle ``revert_fault`` uses (default: ``name``); give one to run two
            faults of the same kind.
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Returns:
        ``{"fault", "key", "params", "output", "ledger_id", "max_duration_s"}``.

    Raises:
        ConfigError: unknown fault, bad parameters, or ``key`` already active.
        LabError: the lab is not up, or the inject failed (what it did is reverted).
    """
    s = session.current(configuration)
    active, output = s.inject(key or name, name, params or {}, max_duration_s)
    entry = active.entry.read() if active.entry else None
    return {"fault": name, "key": key or name, "params": params or {}, "output": output,
            "ledger_id": (entry or {}).get("id"),
            "max_duration_s": (entry or {}).get("max_duration_s")}


def revert_fault(name: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Revert a fault injected by :func:`inject_fault`; idempotent (a fault that is not
    active, was never injected because the method failed earlier, or was already reverted
    by its deadman, is a no-op that succeeds).

    Args:
        name: the fault's key (its name unless ``inject_fault`` was given a ``key``).
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Returns:
        ``{"fault", "reverted": bool, "output", "reverted_by" (runner|deadman),
        "active_s"}`` (the last two only when something was active).

    Raises:
        LabError: the revert command failed (the fault stays listed; a second call retries).
    """
    done = session.current(configuration).revert(name)
    if done is None:
        return {"fault": name, "reverted": False, "output": "not active: nothing to revert"}
    return {"fault": name, "reverted": True, **done}


def _summary(name: str, result: LoadResult) -> dict[str, Any]:
    lat = result.latency_us

    def ms(key: str) -> float | None:
        value = lat.get(key)
        return None if value is None else round(value / 1000.0, 3)

    return {"load": name, "requests": result.requests, "errors": result.errors,
            "error_rate": round(result.error_rate, 6), "tps": round(result.tps, 3),
            "status_counts": result.status_counts, "p50_ms": ms("p50"), "p99_ms": ms("p99"),
            "max_ms": ms("max"), "elapsed_s": round(result.elapsed_s, 3)}


def start_load(name: str, url: str, users: int = 4, rate_per_s: float | None = None,
               duration_s: float = 30.0, timeout_s: float = 10.0, from_pod: str | None = None,
               configuration: dict[str, Any] | None = None, mode: str = "closed-loop",
               connections: int | None = None, distribution: str = "constant"
               ) -> dict[str, Any]:
    """Start load in the background (it runs while later activities inject faults).

    Args:
        name: the load's name (``stop_load`` and the probes refer to it; journal key).
        url: target as the client pod sees it, e.g. ``http://fortio-server:8070/echo``.
        users: concurrent users (keep-alive connections).
        rate_per_s: aggregate requests/s, or None for closed loop as fast as possible.
        duration_s: the load ends by itself after this many seconds (bound, max 3600).
        timeout_s: per-request connect/read timeout in seconds.
        from_pod: client pod (default ``netshoot``, the book's client).
        configuration: the experiment configuration (injected by Chaos Toolkit).
        mode: ``"closed-loop"`` (Locust users) or ``"open-loop"`` (a schedule at
            ``rate_per_s``, latency corrected for coordinated omission).
        connections: open loop: connection pool size (default ``users``).
        distribution: open loop: ``"constant"`` or ``"poisson"`` arrivals.

    Returns:
        ``{"load", "url", "users", "rate_per_s", "duration_s", "pid", "run_dir"}``.

    Raises:
        ConfigError: a bad load option (names the field) or a load of that name running.
        LabError: the runner could not be started.
    """
    s = session.current(configuration)
    spec = LoadSpec(url=url, users=users, duration_s=duration_s, rate_per_s=rate_per_s,
                    timeout_s=timeout_s, name=name, mode=mode, distribution=distribution,
                    connections=connections)
    handle = s.start_load(name, spec, from_pod)
    return {"load": name, "url": url, "users": users, "rate_per_s": rate_per_s,
            "duration_s": duration_s, "pid": handle.process.pid, "run_dir": str(s.journal.dir)}


def stop_load(name: str, wait: bool = False,
              configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stop a background load (or wait for its end), journal its result and render the
    meshlab report; idempotent (a load already finished returns its summary again).

    Args:
        name: the load's name given to :func:`start_load`.
        wait: wait until the load ends by itself instead of stopping it now.
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Returns:
        ``{"load", "stopped": bool, "requests", "errors", "error_rate", "tps",
        "status_counts", "p50_ms", "p99_ms", "max_ms", "elapsed_s", "report"}``, or
        ``{"load", "stopped": False, "output"}`` when no such load was started.

    Raises:
        LabError: the runner failed or wrote no result.
    """
    from meshlab.report.render import render_report

    s = session.current(configuration)
    running = name in s.loads
    result = s.finish_load(name, wait=wait)
    if result is None:
        return {"load": name, "stopped": False, "output": "not started: nothing to stop"}
    s.run.collect_sidecars()
    report = render_report(s.journal.dir)
    return {**_summary(name, result), "stopped": running, "report": str(report)}


def start_tcp_clients(name: str, pod: str, connect: str, count: int = 1, send: str = "hello",
                      close_delay_s: float = 0.0, hold_s: float = 60.0,
                      bind_port: int | None = None, connect_timeout_s: float = 5.0,
                      configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start long-lived TCP app connections from ``pod`` (the "load" of the TCP scenarios):
    each client (:mod:`meshlab.apps.tcp_client`) connects through the pod's sidecar, sends
    ``send``, reads until the peer's FIN or ``hold_s``, then closes ``close_delay_s`` later.

    Args:
        name: the group's name (``stop_tcp_clients`` refers to it).
        pod: the client pod, e.g. ``fortio-server-0`` (L1: its sidecar proxies the TCP).
        connect: ``host:port`` as the pod sees it, e.g. ``tcp-echo:9000``.
        count: number of clients (1..100).
        send: text each client sends after connecting.
        close_delay_s: how late the app closes after the peer's FIN, in seconds.
        hold_s: longest wait for the peer's FIN, in seconds.
        bind_port: first local port (client i binds ``bind_port + i``; reuses a port on
            purpose), or None for ephemeral ports.
        connect_timeout_s: connect() timeout in seconds.
        configuration: the experiment configuration (injected by Chaos Toolkit).

    Returns:
        ``{"group", "pod", "connect", "pids"}``.

    Raises:
        ConfigError: a bad option, or a group of that name still running.
        LabError: a client could not be started.
    """
    s = session.current(configuration)
    group = s.start_clients(name, pod, connect, count, send=send, close_delay_s=close_delay_s,
                            hold_s=hold_s, bind_port=bind_port,
                            connect_timeout_s=connect_timeout_s)
    return {"group": name, "pod": group.pod, "connect": connect,
            "pids": [p.pid for p in group.procs]}


def stop_tcp_clients(name: str, wait: bool = False,
                     configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stop a client group (or wait for its clients to close by themselves); idempotent.

    Returns:
        ``{"group", "stopped": bool, "clients", "connected", "eof", "errors",
        "error_phases", "local_ports"}`` (counts over the group's clients), or ``{"group",
        "stopped": False, "output"}`` when no such group was started.
    """
    s = session.current(configuration)
    running = name in s.clients
    results = s.finish_clients(name, wait=wait)
    if results is None:
        return {"group": name, "stopped": False, "output": "not started: nothing to stop"}
    return {"group": name, "stopped": running, **clients.summarize(results)}
