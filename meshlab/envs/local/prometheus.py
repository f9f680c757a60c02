"""A real Prometheus server inside the local lab (Debian's ``/usr/bin/prometheus``).

It runs in the lab's cluster netns ``ml-<lab>-c``, which holds the underlay bridge ``ul0``:
the bridge gets the underlay's first address (172.18.0.1/16, the "monitoring host") and routes
to every node's pod CIDR via that node's underlay IP (as a host-gw CNI host would), so the
server reaches each pod's 15090/15020 like the in-cluster Prometheus of Istio's addon. Nothing
is configured in the host netns; the runner queries through a thread that entered the cluster
netns (:func:`meshlab.envs.local.netns_socket.run_in_netns`).

Scrape config (``<state>/prometheus/prometheus.yml``), after Istio's Prometheus setup
(istio.io "Prometheus" integration, ``samples/addons/prometheus.yaml``):

- job ``envoy-stats``: ``<pod ip>:15090`` ``/stats/prometheus`` (Envoy's own stats, Istio's
  "Option 2" custom scrape job), and
- job ``kubernetes-pods``: ``<pod ip>:15020`` ``/stats/prometheus`` (pilot-agent's merged
  output that the injected ``prometheus.io/*`` annotations point at; it starts with the
  sidecar process's ``process_*`` metrics, :mod:`meshlab.proxy.stats.process_metrics`),

one target per meshed pod from ``file_sd_configs`` files the lab writes, with the target labels
the Kubernetes relabelling of those jobs gives: ``namespace``, ``pod``, ``node``, ``app``.
Scrape interval :data:`SCRAPE_INTERVAL_S` (per start: ``start(plan, scrape_interval_s=…)``),
TSDB under the lab's state dir (tmpfs, removed by ``down``), retention 1 h, run as the
``prometheus`` user that the Debian package creates (``nobody`` without it), at ``SCHED_IDLE``
(``chrt --idle 0``; ``nice -n 19`` where refused, :mod:`meshlab.envs.idle`): the
server's scrapes, compactions and queries only get CPU the data path leaves over.

The PID is recorded in the lab state (``pids["prometheus"]``), and the process lives in the
cluster netns, so ``down`` — and the next ``up`` after a ``kill -9``'d runner — stops it
(:func:`meshlab.envs.local.state.cleanup` kills recorded PIDs and every process of the lab's
namespaces).
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from meshlab.envs.base import run_argv
from meshlab.envs.idle import idle_argv_prefix
from meshlab.envs.local.netns import NETNS_DIR, NetnsShell, kill_pids, process_alive
from meshlab.envs.local.network import UNDERLAY_BRIDGE
from meshlab.envs.local.plan import LabPlan
from meshlab.envs.local.state import LabState, locked_state
from meshlab.errors import LabError
from meshlab.polling import PollTimeout, wait_until

PROMETHEUS_BIN = "/usr/bin/prometheus"
PORT = 9090
PID_KEY = "prometheus"
"""Key of the server's PID in :attr:`LabState.pids`."""
SCRAPE_INTERVAL_S = 5
"""Default seconds between scrapes. Measured on the base lab (``benchmarks/collectors.py``,
``benchmarks/results/collectors-latest.md``, idle lab, CPU seconds per minute): 1 s costs 4.6
(7.7 % of one core: Prometheus 1.2, the sidecars rendering ``/stats/prometheus`` 3.4), 5 s
1.0 (1.7 %), 15 s (Istio's default) 0.3 (0.5 %) but every run's end-of-window query would wait
up to 15 s for the next scrape."""
MAX_SCRAPE_TIMEOUT_S = 10
"""Istio's addon scrapes with a 10 s timeout; Prometheus needs timeout ≤ interval."""
RETENTION = "1h"
METRICS_PATH = "/stats/prometheus"
JOBS = {"envoy-stats": 15090, "kubernetes-pods": 15020}
"""Scrape job name → sidecar port scraped at :data:`METRICS_PATH`."""
READY_TIMEOUT_S = 30.0
RUN_AS = ("prometheus", "nobody")
"""Users to run as, first that exists."""


def monitor_ip(plan: LabPlan) -> str:
    """The cluster netns' address on the underlay: its first host address (172.18.0.1)."""
    net = ipaddress.ip_network(plan.topology.cluster.underlay_cidr)
    return str(net.network_address + 1)


def server_url(plan: LabPlan) -> str:
    """``http://<monitor ip>:9090``."""
    return f"http://{monitor_ip(plan)}:{PORT}"


def server_dir(lab: str) -> Path:
    """``<state dir>/prometheus``: config, targets files, TSDB (``data``) and log."""
    return LabState.dir_for(lab) / "prometheus"


def targets_file(lab: str, job: str) -> Path:
    """The ``file_sd_configs`` file of ``job``."""
    return server_dir(lab) / f"targets-{job}.json"


def target_groups(plan: LabPlan, port: int) -> list[dict[str, Any]]:
    """File-SD target groups: one per meshed pod, ``{"targets": ["<ip>:<port>"], "labels":
    {"namespace", "pod", "node", "app"}}`` (``app``: the pod's ``app`` label, else its
    workload name)."""
    return [{"targets": [f"{pp.ip}:{port}"],
             "labels": {"namespace": pp.pod.namespace, "pod": pp.name, "node": pp.node.name,
                        "app": pp.pod.labels.get("app", pp.pod.workload.name)}}
            for pp in plan.pods.values() if pp.pod.meshed]


def _duration(seconds: float) -> str:
    return f"{seconds:g}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


def server_config(lab: str, scrape_interval_s: float = SCRAPE_INTERVAL_S) -> dict[str, Any]:
    """The ``prometheus.yml`` document: every job scraped each ``scrape_interval_s``, with a
    timeout of the interval up to :data:`MAX_SCRAPE_TIMEOUT_S` (Prometheus rejects a timeout
    longer than the interval)."""
    interval = _duration(scrape_interval_s)
    return {
        "global": {"scrape_interval": interval,
                   "scrape_timeout": _duration(min(scrape_interval_s, MAX_SCRAPE_TIMEOUT_S)),
                   "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "metrics_path": METRICS_PATH,
             "file_sd_configs": [{"files": [str(targets_file(lab, job))],
                                  "refresh_interval": "5s"}]}
            for job in JOBS],
    }


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # file SD reads whole files only


def write_files(plan: LabPlan, scrape_interval_s: float = SCRAPE_INTERVAL_S) -> Path:
    """Write the targets files and the config; returns the config path."""
    folder = server_dir(plan.lab)
    folder.mkdir(parents=True, exist_ok=True)
    for job, port in JOBS.items():
        _write(targets_file(plan.lab, job), json.dumps(target_groups(plan, port), indent=1))
    config = folder / "prometheus.yml"
    _write(config, yaml.safe_dump(server_config(plan.lab, scrape_interval_s), sort_keys=False))
    return config


def configured_interval_s(lab: str) -> float | None:
    """The scrape interval in the lab server's written config, in seconds (None without one)."""
    try:
        doc = yaml.safe_load((server_dir(lab) / "prometheus.yml").read_text())
        text = str(doc["global"]["scrape_interval"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.rstrip("s")) if text.endswith("s") else None


def connect_cluster_netns(plan: LabPlan) -> None:
    """Give ``ul0`` the monitor address and route each node's pod CIDR via the node
    (idempotent: ``replace``; only inside the cluster netns)."""
    c = plan.cluster_netns
    prefix_len = ipaddress.ip_network(plan.topology.cluster.underlay_cidr).prefixlen
    run_argv(["ip", "-n", c, "addr", "replace", f"{monitor_ip(plan)}/{prefix_len}",
              "dev", UNDERLAY_BRIDGE])
    for node in plan.nodes.values():
        run_argv(["ip", "-n", c, "route", "replace", node.pod_cidr, "via", node.ip])


def _user() -> tuple[int, int]:
    for name in RUN_AS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return 65534, 65534


def is_server(pid: int, lab: str, exec_wait_s: float = 1.0) -> bool:
    """True when ``pid`` is this lab's Prometheus (alive, its config under the lab's dir).

    A process's ``/proc/<pid>/cmdline`` reads empty while it forks and execs (``ip netns
    exec`` → ``setpriv`` → ``prometheus``), so an empty one is re-read for ``exec_wait_s``.
    """
    config = f"--config.file={server_dir(lab) / 'prometheus.yml'}".encode()

    def cmdline() -> bytes | None:
        """The argv bytes, None once the process is gone."""
        if not process_alive(pid):
            return None
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None

    try:
        argv = wait_until(cmdline, lambda got: got != b"", timeout_s=exec_wait_s,
                          every_s=0.01, what=f"pid {pid} exec'd")
    except PollTimeout:
        return False  # still empty: not (yet) Prometheus
    return argv is not None and config in argv.split(b"\0")


@contextmanager
def _state_locked(lab: str) -> Iterator[LabState]:
    """The lab state, loaded fresh under the lab's state lock
    (:func:`~meshlab.envs.local.state.locked_state`), so others' writes are not lost.

    Raises:
        LabError: the lab has no state file.
    """
    with locked_state(lab) as state:
        if state is None:
            raise LabError(f"lab {lab!r} is not up (no state file)")
        yield state


def running_pid(lab: str) -> int | None:
    """The PID of the lab's Prometheus if it runs, else None."""
    state = LabState.load(lab)
    pid = state.pids.get(PID_KEY) if state else None
    return pid if pid and is_server(pid, lab) else None


def start(plan: LabPlan, scrape_interval_s: float = SCRAPE_INTERVAL_S) -> int:
    """Start the lab's Prometheus unless it runs (does not wait for it to be ready), at idle
    CPU priority.

    Args:
        plan: the lab plan.
        scrape_interval_s: seconds between scrapes (ignored when it already runs).

    Returns:
        Its PID.

    Raises:
        LabError: the lab is not up, or ``/usr/bin/prometheus`` is missing (``scripts/setup.sh``
            installs Debian's ``prometheus``).
    """
    if not (NETNS_DIR / plan.cluster_netns).exists():
        raise LabError(f"Prometheus: lab {plan.lab!r} is not up ({plan.cluster_netns} missing)")
    if not Path(PROMETHEUS_BIN).exists():
        raise LabError(f"Prometheus: {PROMETHEUS_BIN} not found (run scripts/setup.sh)")
    with _state_locked(plan.lab) as state:
        pid = state.pids.get(PID_KEY)
        if pid and is_server(pid, plan.lab):
            return pid
        connect_cluster_netns(plan)
        config = write_files(plan, scrape_interval_s)
        folder = config.parent
        uid, gid = _user()
        (folder / "data").mkdir(exist_ok=True)
        for path in [folder / "data", *(folder / "data").rglob("*")]:
            os.chown(path, uid, gid)
        argv = [*idle_argv_prefix(), PROMETHEUS_BIN, f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address={monitor_ip(plan)}:{PORT}"]
        log = folder / "prometheus.log"
        proc = NetnsShell(plan.cluster_netns, "prometheus").popen(
            argv, stdout=log, stderr=log, user=f"{uid}:{gid}")
        state.pids[PID_KEY] = proc.pid
        state.save()
        return proc.pid


def log_tail(lab: str, lines: int = 5) -> str:
    """The last lines of the server's log (for errors)."""
    path = server_dir(lab) / "prometheus.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def wait_ready(plan: LabPlan, pid: int, client: Any,
               timeout_s: float = READY_TIMEOUT_S) -> float:
    """Poll until ``GET /-/ready`` answers 200 and every target of every job has been scraped
    once (file SD hands targets to the scrape loops only every 5 s, Prometheus'
    ``discovery.Manager`` ``updatert``), failing fast if the process exited.

    Args:
        plan: the lab plan (its meshed pods are the targets).
        pid: the server's PID.
        client: a :class:`~meshlab.envs.prometheus_api.PrometheusClient` for it.
        timeout_s: give up after this many seconds.

    Returns:
        Seconds waited.

    Raises:
        LabError: the process exited, or was not ready within ``timeout_s``.
    """
    expected = len(JOBS) * sum(1 for pp in plan.pods.values() if pp.pod.meshed)
    start_s = time.monotonic()

    def scraped() -> bool:
        if not client.ready():
            return False
        found = client.targets()
        return len(found) == expected and all(t["health"] != "unknown" for t in found)

    def scraped_or_exited() -> bool:
        if scraped():
            return True
        if not is_server(pid, plan.lab):
            raise LabError(f"Prometheus exited during start-up; log:\n{log_tail(plan.lab)}")
        return False

    try:
        wait_until(scraped_or_exited, timeout_s=timeout_s, every_s=0.1,
                   what="Prometheus ready and its targets scraped")
    except PollTimeout:
        raise LabError(f"Prometheus not ready (or its {expected} targets not scraped) "
                       f"after {timeout_s:g} s; log:\n{log_tail(plan.lab)}") from None
    return time.monotonic() - start_s


def stop(lab: str) -> bool:
    """Stop the lab's Prometheus (SIGTERM, then SIGKILL) and remove its files (idempotent).

    Returns:
        True when a running server was stopped.
    """
    if LabState.load(lab) is None:
        return False
    with _state_locked(lab) as state:
        pid = state.pids.pop(PID_KEY, None)
        running = bool(pid and is_server(pid, lab))
        if running:
            kill_pids([pid])
        state.save()
    shutil.rmtree(server_dir(lab), ignore_errors=True)
    return running
