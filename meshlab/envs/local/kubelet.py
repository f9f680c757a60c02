"""The local lab's "kubelet": start each pod's processes and its sidecar, wait until ready.

The app process runs with the manifest's args (see :mod:`meshlab.envs.local.images`). A meshed
pod also gets ``python -m meshlab.proxy --config sidecar.json`` which binds its listeners and
then drops to uid/gid 1337 (Istio's proxy user), so the capture rules exempt exactly its traffic.
Logs go to ``<state>/pods/<pod>/<container>.log``.

Each container runs in its own cgroup under one parent per pod (:mod:`meshlab.envs.local.cgroups`,
``meshlab/<lab>/<pod>/<container>``), with ``resources.limits`` as its CFS quota and memory
limit; the sidecar's come from ``sidecar.istio.io/proxyCPULimit``/``proxyMemoryLimit``. The
directories made are recorded in the lab state before the process starts, and cleanup removes
them. On a machine without usable cgroups the containers run without them, unless a limit asks
for one (then ``up`` fails and says why).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meshlab.envs.local import istiod
from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.images import local_command
from meshlab.envs.local.istio_iptables import PROXY_GID, PROXY_UID
from meshlab.envs.local.istio_push import pushed_plan
from meshlab.envs.local.netns import NetnsShell, process_alive
from meshlab.envs.local.plan import LabPlan, PodPlan
from meshlab.envs.local.pod_status import ContainerStatus
from meshlab.envs.local.state import LabState
from meshlab.errors import LabError

SIDECAR_PORTS = (15000, 15001, 15006, 15020, 15090)
SIDECAR_CONTAINER = "istio-proxy"


def pod_dir(state: LabState, pod: str) -> Path:
    """The pod's folder under the state dir (logs, sidecar config, access log)."""
    return state.dir / "pods" / pod


def cgroups() -> Cgroups | None:
    """The machine's cgroups, or None where there are none the lab can use."""
    try:
        return Cgroups()
    except LabError:
        return None


def container_cgroup(state: LabState, pod: str, container: str, cpu_limit_m: int | None,
                     memory_limit_bytes: int | None) -> Callable[[list[str]], list[str]] | None:
    """Make ``container``'s cgroup with its limits (recorded in ``state`` first) and return
    the wrapper that starts a command line inside it (:meth:`NetnsShell.popen` ``wrap``); None
    on a machine without cgroups.

    Raises:
        LabError: a limit is asked for but there are no cgroups, or the kernel refused it.
    """
    groups = cgroups()
    if groups is None:
        if cpu_limit_m is not None or memory_limit_bytes is not None:
            raise LabError(f"pod {pod}: container {container} has resource limits but this "
                           f"machine has no cgroup cpu/memory controllers to enforce them")
        return None
    rel = Cgroups.rel(state.lab, pod, container)
    state.cgroups = sorted({*state.cgroups, *(str(d) for d in groups.dirs(rel).values())})
    state.save()
    groups.create(rel)
    groups.set_cpu_limit(rel, cpu_limit_m)
    groups.set_memory_limit(rel, memory_limit_bytes)
    return lambda argv: groups.enter_argv(rel, argv)


def pod_containers(pp: PodPlan) -> list[str]:
    """The containers of ``pp`` that run a process, in start order: ``istio-proxy`` first for
    a meshed pod (Istio's ``holdApplicationUntilProxyStarts``), then the app containers."""
    wl = pp.pod.workload
    apps = [c.name for i, c in enumerate(wl.containers) if local_command(wl, i, c) is not None]
    return ([SIDECAR_CONTAINER] if pp.pod.meshed else []) + apps


def _container_argv(plan: LabPlan, state: LabState, pp: PodPlan, name: str,
                    python: str) -> tuple[list[str], int | None, int | None]:
    """``(argv, cpu limit m, memory limit bytes)`` of container ``name``; the sidecar's
    ``sidecar.json`` (with what istiod has pushed) and access log are written first."""
    pdir = pod_dir(state, pp.name)
    wl = pp.pod.workload
    if name == SIDECAR_CONTAINER:
        access_log = pdir / "access.log"
        access_log.touch()
        os.chown(access_log, PROXY_UID, PROXY_GID)
        cfg_path = pdir / "sidecar.json"
        cfg_path.write_text(istiod.dump(istiod.sidecar_config(pushed_plan(plan, state), pp,
                                                              str(access_log))))
        return ([python, "-m", "meshlab.proxy", "--config", str(cfg_path), "--uid",
                 str(PROXY_UID), "--gid", str(PROXY_GID)],
                wl.proxy_cpu_limit_m, wl.proxy_memory_limit_bytes)
    for i, container in enumerate(wl.containers):
        argv = local_command(wl, i, container, python) if container.name == name else None
        if argv is not None:
            return argv, container.cpu_limit_m, container.memory_limit_bytes
    raise LabError(f"pod {pp.name}: no container {name!r} to start")


def start_container(plan: LabPlan, state: LabState, pp: PodPlan, name: str,
                    python: str = sys.executable) -> int:
    """Start one container of ``pp`` in its cgroup and the pod's netns; its pid and a fresh
    status line (start time, the cgroup's OOM-kill count) go into ``state`` (saved).

    Returns:
        The pid.

    Raises:
        LabError: it could not be started, or its limits could not be set.
    """
    pdir = pod_dir(state, pp.name)
    pdir.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONUNBUFFERED": "1", "HOSTNAME": pp.name, "POD_NAME": pp.name,
           "POD_NAMESPACE": pp.pod.namespace, "INSTANCE_IP": pp.ip}
    argv, cpu_m, memory_bytes = _container_argv(plan, state, pp, name, python)
    log = pdir / f"{name}.log"
    wrap = container_cgroup(state, pp.name, name, cpu_m, memory_bytes)
    proc = NetnsShell(pp.netns, pp.name).popen(argv, stdout=log, stderr=log, env=env, wrap=wrap)
    key = f"{pp.name}/{name}"
    state.pids[key] = proc.pid
    status = ContainerStatus.from_dict(state.containers.get(key))
    groups = cgroups()
    status.started_at = time.time()
    status.oom_kills = groups.oom_kills(Cgroups.rel(state.lab, pp.name, name)) if groups else 0
    state.containers[key] = status.to_dict()
    state.save()
    return proc.pid


def start_pod(plan: LabPlan, state: LabState, pp: PodPlan, python: str = sys.executable) -> None:
    """Start the pod's containers (:func:`pod_containers` order), each in its cgroup."""
    for name in pod_containers(pp):
        start_container(plan, state, pp, name, python)


def expected_ports(pp: PodPlan) -> list[int]:
    """TCP ports that must listen before the pod counts as ready."""
    wl = pp.pod.workload
    ports = [p.port for i, c in enumerate(wl.containers) if local_command(wl, i, c) is not None
             for p in c.ports if p.protocol != "grpc"]
    return ports + (list(SIDECAR_PORTS) if pp.pod.meshed else [])


def listening_ports(shell: NetnsShell) -> set[int]:
    """TCP ports in LISTEN state in the shell's netns (from ``ss -Htln``)."""
    res = shell.run(["ss", "-Htln"], check=False, timeout_s=10)
    ports = set()
    for line in res.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4 and ":" in cols[3]:
            tail = cols[3].rsplit(":", 1)[1]
            if tail.isdigit():
                ports.add(int(tail))
    return ports


def start_pods(plan: LabPlan, state: LabState, pods: list[PodPlan],
               timeout_s: float = 30.0) -> None:
    """Start ``pods`` (every pod at ``up``, one node's at a node power-on) and wait until they
    are ready (:func:`wait_ready`).

    Raises:
        LabError: as :func:`wait_ready`.
    """
    for pp in pods:
        start_pod(plan, state, pp)
    wait_ready(plan, state, timeout_s, pods)


def wait_ready(plan: LabPlan, state: LabState, timeout_s: float = 30.0,
               pods: list[PodPlan] | None = None) -> None:
    """Poll each pod (default: every pod of the plan) until its expected ports listen,
    failing fast if a process died.

    Raises:
        LabError: a process exited, or a port did not listen within ``timeout_s``; the message
            names the pod, the port and the last lines of the container log.
    """
    deadline = time.monotonic() + timeout_s
    pending = {pp.name: set(expected_ports(pp))
               for pp in (plan.pods.values() if pods is None else pods)}
    while True:
        for name, ports in list(pending.items()):
            _check_alive(state, name)
            ports -= listening_ports(NetnsShell(plan.pods[name].netns))
            if not ports:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            name, ports = next(iter(pending.items()))
            raise LabError(f"pod {name} not ready after {timeout_s:.0f} s: port(s) "
                           f"{sorted(ports)} not listening{_log_tail(state, name)}")
        time.sleep(0.05)


def _check_alive(state: LabState, pod: str) -> None:
    for key, pid in state.pids.items():
        if key.startswith(pod + "/") and not process_alive(pid):
            raise LabError(f"pod {pod}: container {key.split('/', 1)[1]} exited during start-up"
                           f"{_log_tail(state, pod, key.split('/', 1)[1])}")


def _log_tail(state: LabState, pod: str, container: str | None = None, lines: int = 5) -> str:
    logs = sorted(pod_dir(state, pod).glob(f"{container or '*'}.log"))
    tail = []
    for log in logs:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        tail += [f"  {log.name}: {t}" for t in text]
    return ("; log:\n" + "\n".join(tail)) if tail else ""
