"""``cpu-stress``: burn CPU inside a container so that it competes with the container's own
processes under the container's limit (Chaos Mesh StressChaos ``cpu``, Litmus
``pod-cpu-hog``, stress-ng ``--cpu N --cpu-load P``).

``workers`` burner processes (:mod:`meshlab.faults.cpu_burner`, a duty cycle of ``load_pct`` %
of one CPU each) are started in the container's cgroup and the pod's network namespace, as a
process ``kubectl exec``'d into the container would be. With a CPU limit on the container they
spend its quota: the app (or sidecar) is throttled sooner; without one they compete for the
node's CPUs. The burners are found again by their command line (``--id <stress_id>``), so a
fresh instance — the deadman's, ``meshlab down``'s — stops exactly them. On a cluster the
burners are shell loops in the pod's debug container, in the pod's cgroup
(:mod:`meshlab.envs.kube.containers`).
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field

from meshlab.envs.base import Env
from meshlab.envs.capabilities import ShellBurners
from meshlab.errors import LabError
from meshlab.faults.container_target import check_container, container_env, resolve
from meshlab.faults.targets import param_error, require_target
from meshlab.polling import PollTimeout, wait_until

NAME = "cpu-stress"
MAX_WORKERS = 16
STOP_S = 5.0


@dataclass
class CpuStress:
    """Run CPU burners inside a container until revert.

    Args:
        target: pod or workload name.
        workers: burner processes, 1-16.
        load_pct: percent of one CPU each burner uses, 1-100.
        container: container name (``istio-proxy`` for the sidecar); None: the pod's first app
            container.
        stress_id: names the burners (generated; kept so a fresh instance stops them).

    Raises:
        ConfigError: a bad parameter (the message names the field), or an env that cannot act
            on single containers.
    """

    target: str
    workers: int = 1
    load_pct: float = 100.0
    container: str | None = None
    stress_id: str = field(default_factory=lambda: secrets.token_hex(4))
    name = NAME

    def __post_init__(self) -> None:
        require_target(NAME, self.target)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not (
                1 <= self.workers <= MAX_WORKERS):
            raise param_error(NAME, "workers", f"must be a whole number in 1..{MAX_WORKERS}, "
                                               f"got {self.workers!r}")
        if isinstance(self.load_pct, bool) or not isinstance(self.load_pct, int | float) or not (
                1 <= self.load_pct <= 100):
            raise param_error(NAME, "load_pct", f"must be a number in 1..100, got "
                                                f"{self.load_pct!r}")
        check_container(NAME, self.container)
        if not isinstance(self.stress_id, str) or not self.stress_id.isalnum():
            raise param_error(NAME, "stress_id", f"must be letters and digits, got "
                                                 f"{self.stress_id!r}")

    def argv(self, env: Env | None = None) -> list[str]:
        """One burner's command line: meshlab's Python burner, or the env's shell loop where
        containers have no meshlab (:class:`~meshlab.envs.capabilities.ShellBurners`, a cluster)."""
        if isinstance(env, ShellBurners):
            return env.burner_argv(self.load_pct, self.stress_id)
        return [sys.executable, "-m", "meshlab.faults.cpu_burner", "--load-pct",
                f"{self.load_pct:g}", "--id", self.stress_id]

    def _pattern(self) -> str:
        return f"meshlab.faults.cpu_burner .*--id {self.stress_id}$"

    def _pids(self, env: Env, pod: str) -> list[int]:
        res = env.pod_shell(pod).run(["pgrep", "-f", self._pattern()], check=False)
        return [int(p) for p in res.stdout.split()] if res.ok else []

    def inject(self, env: Env) -> str:
        """Start the burners and wait until each runs the burner.

        Raises:
            ConfigError: unknown pod or container. LabError: no cgroups, or a burner did not
                start.
        """
        pod, container = resolve(env, NAME, self.target, self.container)
        envc = container_env(env, NAME)
        self.container = container
        for _ in range(self.workers):
            envc.run_in_container(pod, container, self.argv(env),
                                  f"cpu-stress-{self.stress_id}")
        if isinstance(env, ShellBurners) and env.dry_run:
            return f"{pod}/{container}: {self.workers} burner(s) printed (dry run)"
        try:
            wait_until(lambda: self._pids(env, pod), lambda p: len(p) >= self.workers,
                       timeout_s=10.0, what=f"{self.workers} burners running")
        except PollTimeout as exc:
            raise LabError(f"{NAME}: the burners did not start: {exc}") from exc
        return (f"{pod}/{container}: {self.workers} burner(s) at {self.load_pct:g} % of a CPU "
                f"(id {self.stress_id})")

    def revert(self, env: Env) -> str:
        """Stop the burners (SIGTERM, then SIGKILL after :data:`STOP_S`); idempotent."""
        pod, _ = resolve(env, NAME, self.target, self.container)
        if isinstance(env, ShellBurners) and env.dry_run:
            env.pod_shell(pod).run(["pkill", "-TERM", "-f", self._pattern()], check=False)
            return f"{pod}: burners stopped (dry run)"
        pids = self._pids(env, pod)
        if not pids:
            return f"{pod}: no burner running (id {self.stress_id})"
        shell = env.pod_shell(pod)
        shell.run(["pkill", "-TERM", "-f", self._pattern()], check=False)
        try:
            wait_until(lambda: self._pids(env, pod), lambda p: not p, timeout_s=STOP_S,
                       what="burners stopped")
        except PollTimeout:
            shell.run(["pkill", "-KILL", "-f", self._pattern()], check=False)
        return f"{pod}: stopped {len(pids)} burner(s) (id {self.stress_id})"
