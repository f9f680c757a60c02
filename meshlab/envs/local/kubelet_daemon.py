"""The local lab's kubelet loop: restarts dead containers with CrashLoopBackOff, recreates
deleted pods, and keeps every Service's endpoints to the ready pods.

``up`` starts one per lab after every pod is ready (``python -m meshlab.envs.local.kubelet_daemon
<state dir>``; pid in ``LabState.kubelet_pid``, log ``<state dir>/kubelet.log``); ``down``
stops it first. Every :data:`RELIST_S` (the kubelet's PLEG relist period, K:
``pkg/kubelet/kubelet.go`` ``plegRelistPeriod``) it takes the lab's state lock and, for each pod
on a powered node:

- a container whose process is gone is recorded as terminated (``OOMKilled`` when its memory
  cgroup's OOM killer struck, else ``Error``/``Completed`` by exit status) and restarted as the
  kubelet does for ``restartPolicy: Always`` (:mod:`meshlab.envs.local.pod_status`: at once,
  then after 10 s, 20 s, … 300 s, times the lab's scale);
- a pod in ``LabState.deleting`` (``pod-kill`` of a whole pod) has what is left of it killed,
  then is created again with the same name and fresh restart counts, as its StatefulSet
  controller does;
- a pod with a container not running is **not ready**: it leaves every Service's endpoints, in
  kube-proxy's rules on every node and in every sidecar's EDS (``sidecar.json`` rewritten, as
  istiod's push), until all its containers run and its ports listen again.

A powered-off node's pods are left alone: Kubernetes keeps a lost node's endpoints until the
node controller marks it NotReady (the node-power-off suites measure that window).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from meshlab.envs.local import istio_push, kubelet
from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.netns import NETNS_DIR, NetnsShell, kill_pids, process_exit
from meshlab.envs.local.network import program_services
from meshlab.envs.local.plan import LabPlan, PodPlan, make_plan
from meshlab.envs.local.pod_status import (
    CRASH_LOOP,
    WAITING,
    ContainerStatus,
    note_exit,
    note_restart,
    restart_due_at,
)
from meshlab.envs.local.state import LabState, locked_state
from meshlab.errors import LabError
from meshlab.manifests.loader import load_topology
from meshlab.polling import PollTimeout, wait_until

RELIST_S = 1.0
"""Seconds between two looks at the lab (the kubelet's PLEG relist period)."""
START_TIMEOUT_S = 30.0
STARTED = b"kubelet loop: watching"


def start(state: LabState, python: str = sys.executable) -> int:
    """Start the lab's kubelet loop (recorded in ``state``, saved) and return its pid once it
    watches the lab (so every change from now on is seen).

    Raises:
        LabError: it exited or did not start within :data:`START_TIMEOUT_S`.
    """
    log = state.dir / "kubelet.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([python, "-m", "meshlab.envs.local.kubelet_daemon",
                                 str(state.dir)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state.kubelet_pid = proc.pid
    state.save()
    try:
        wait_until(lambda: log.read_bytes(), lambda text: STARTED in text or proc.poll() is not
                   None, timeout_s=START_TIMEOUT_S, what="the kubelet loop started")
    except PollTimeout as exc:
        raise LabError(f"kubelet loop: {exc}") from None
    if proc.poll() is not None:
        raise LabError(f"kubelet loop exited at start-up ({proc.returncode}): "
                       f"{log.read_text(errors='replace')[-500:]}")
    return proc.pid


class Kubelet:
    """The kubelet loop's memory between two looks (:meth:`sync`).

    Args:
        plan: the lab plan.
        groups: the machine's cgroups (None: none; OOM kills are then not told apart).
        pushed: the pods the endpoints were last pushed without.
    """

    def __init__(self, plan: LabPlan, groups: Cgroups | None, pushed: set[str]) -> None:
        self.plan, self.groups, self.pushed = plan, groups, set(pushed)
        self.scale = plan.topology.cluster.backoff_scale
        self.state = LabState(lab=plan.lab)

    def log(self, msg: str) -> None:
        """One event line on stdout (the kubelet log)."""
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def sync(self, state: LabState) -> None:
        """One look at ``state`` (loaded under the lock): restart, recreate and re-endpoint as
        the module docstring says; saves the state and pushes endpoints on a change."""
        self.state = state
        unready = set(state.unready)
        for pp in self.plan.pods.values():
            if pp.node.name in state.powered_off or not (NETNS_DIR / pp.netns).exists():
                continue
            if pp.name in state.deleting and not self._recreate(pp):
                unready.add(pp.name)
                continue
            running = [self._sync_container(pp, name) for name in kubelet.pod_containers(pp)]
            if not all(running):
                unready.add(pp.name)
            elif pp.name in unready and self._listening(pp):
                unready.discard(pp.name)
                self.log(f"pod {pp.name}: ready")
        if sorted(unready) != sorted(state.unready):
            state.unready = sorted(unready)
            state.save()
        if unready != self.pushed:
            self._push_endpoints()
            self.pushed = unready
            self.log(f"endpoints pushed without {sorted(unready)}")

    def _key(self, pp: PodPlan, name: str) -> str:
        return f"{pp.name}/{name}"

    def _sync_container(self, pp: PodPlan, name: str) -> bool:
        """True when the container runs (after restarting it if its backoff allows)."""
        key = self._key(pp, name)
        st = ContainerStatus.from_dict(self.state.containers.get(key))
        pid = self.state.pids.get(key)
        now = time.time()
        if pid:
            gone, code = process_exit(pid)
            if not gone:
                return True
            rel = Cgroups.rel(self.state.lab, pp.name, name)
            oom = self.groups is not None and self.groups.oom_kills(rel) > st.oom_kills
            note_exit(st, now, code, oom)
            del self.state.pids[key]
            # not ready from now on, saved with the exit: a reader that sees the restart
            # (its count) must never see the pod as ready before it listens again
            self.state.unready = sorted({*self.state.unready, pp.name})
            self.log(f"container {key}: exited ({st.last_exit_reason}, code {code})")
        if not pid and not st.started_at:  # a recreated pod's container: created, no restart
            kubelet.start_container(self.plan, self.state, pp, name)
            self.log(f"container {key}: created")
            return False
        due = restart_due_at(st, self.scale)
        if now < due:
            if st.reason != CRASH_LOOP:
                self.log(f"container {key}: back-off {due - now:.1f} s restarting it")
                st.state, st.reason = WAITING, CRASH_LOOP
                self.state.containers[key] = st.to_dict()
                self.state.save()
            return False
        note_restart(st, now, self.scale)
        self.state.containers[key] = st.to_dict()
        kubelet.start_container(self.plan, self.state, pp, name)  # saves
        self.log(f"container {key}: restarted (restart {st.restart_count})")
        return False  # not ready before its ports listen

    def _recreate(self, pp: PodPlan) -> bool:
        """A deleted pod: once its grace period is over, kill what is left and forget its
        containers' statuses (they are created on this pass, restart counts 0). False while
        the grace period runs."""
        keys = [self._key(pp, name) for name in kubelet.pod_containers(pp)]
        pids = [self.state.pids[k] for k in keys if k in self.state.pids]
        if time.time() < self.state.deleting[pp.name] and any(process_exit(p)[0] is False
                                                              for p in pids):
            return False
        kill_pids(pids, grace_s=5.0, first=signal.SIGKILL)
        for k in keys:
            self.state.pids.pop(k, None)
            self.state.containers[k] = ContainerStatus().to_dict()
        del self.state.deleting[pp.name]
        self.state.save()
        self.log(f"pod {pp.name}: deleted; creating it again")
        return True

    def _listening(self, pp: PodPlan) -> bool:
        want = set(kubelet.expected_ports(pp))
        return want <= kubelet.listening_ports(NetnsShell(pp.netns))

    def _push_endpoints(self) -> None:
        """kube-proxy resync on every powered node and an EDS push to every sidecar."""
        pushed = istio_push.pushed_plan(self.plan, self.state)
        for node in self.plan.nodes.values():
            if node.name not in self.state.powered_off and (NETNS_DIR / node.netns).exists():
                program_services(pushed, node, resync=True)
        istio_push.write_configs(self.plan, self.state, kubelet.pod_dir)


def run(state_dir: Path) -> int:
    """The loop: one :meth:`Kubelet.sync` per :data:`RELIST_S` while the lab is up.

    Returns:
        0 once the lab is no longer up (torn down, or its state file is gone).
    """
    lab = state_dir.name
    state = LabState.load(lab)
    if state is None:
        return 0
    plan = make_plan(load_topology([Path(m) for m in state.manifests]), lab)
    loop = Kubelet(plan, kubelet.cgroups(), set(state.unready))
    loop.log(f"{STARTED.decode()} {len(plan.pods)} pod(s) of lab {lab}")
    while True:
        with locked_state(lab) as state:
            if state is None or state.status != "up":
                return 0
            loop.sync(state)
        time.sleep(RELIST_S)  # the relist period


if __name__ == "__main__":  # pragma: no cover - the daemon's entry point
    sys.exit(run(Path(sys.argv[1])))
