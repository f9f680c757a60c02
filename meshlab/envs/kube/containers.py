"""Per-container operations on a cluster (the
:class:`~meshlab.envs.capabilities.Containers` capability of the kube env): pause by SIGSTOP, a
live CPU limit by Kubernetes' in-place resize.

- **Pause**: the container's processes get SIGSTOP (resume: SIGCONT): the app's from the pod's
  debug container, which targets the app and shares its process namespace; ``istio-proxy``'s
  from inside it. ``kill -1`` reaches every process of the namespace but PID 1 and the caller,
  so PID 1 (the container's entrypoint) is signalled by number too. Unlike the local lab's
  freezer, a stopped process is visible to its parent; sockets stay open either way.
- **CPU limit**: a patch of the pod's ``resize`` subresource (in-place pod resize, beta and on
  by default since Kubernetes 1.33); a cluster without it answers 404, and the limit change is
  refused with that reason. The kubelet writes the new CFS quota.
- **Usage**: not read here (a cluster's cAdvisor/metrics-server has it): no series.
- **Run in a container**: from the pod's debug container (``nohup``, so it outlives the
  exec), which shares the app's process namespace and sits in the pod's cgroup: a burner there
  competes with the pod's containers under the pod's CPU limit (the sum of theirs), not under
  one container's quota as in the local lab. The burner is a shell loop
  (:meth:`KubeContainers.burner_argv`): app images have no Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshlab.envs.kube.facade import ClusterApi
from meshlab.envs.kube.shells import SIDECAR, DebugContainers, app_container
from meshlab.errors import ConfigError, LabError
from meshlab.manifests.quantity import cpu_millicores

SIGNAL_TIMEOUT_S = 30.0
"""Seconds an exec that signals a container may take."""


class KubeContainers:
    """The kube env's container operations (a mixin of :class:`~meshlab.envs.kube.env.KubeEnv`,
    which provides the attributes below)."""

    api: ClusterApi
    namespace: str
    _debug: DebugContainers | None

    if TYPE_CHECKING:  # pragma: no cover - KubeEnv's
        def _find(self, name: str) -> dict[str, Any]: ...
        def _debug_container(self, name: str) -> str: ...

    def _container(self, pod: str, container: str) -> tuple[dict[str, Any], str]:
        """``(pod object, the container that signals it)``.

        Raises:
            ConfigError: no such container, or one the debug container cannot reach.
        """
        obj = self._find(pod)
        names = [c["name"] for c in obj["spec"]["containers"]]
        if container not in names:
            raise ConfigError(f"container: pod {obj['metadata']['name']} has no container "
                              f"{container!r} (containers: {', '.join(names)})")
        if container == SIDECAR:
            return obj, SIDECAR
        if container != app_container(obj):
            raise ConfigError(f"container: {container!r} cannot be signalled: the debug "
                              f"container targets {app_container(obj)!r}")
        return obj, self._debug_container(obj["metadata"]["name"])

    def _signal(self, pod: str, container: str, sig: str) -> str:
        obj, via = self._container(pod, container)
        name = obj["metadata"]["name"]
        argv = ["sh", "-c", f"kill -s {sig} -1 2>/dev/null; kill -s {sig} 1"]
        res = self.api.exec(self.namespace, name, via, argv, timeout_s=SIGNAL_TIMEOUT_S)
        if res.returncode != 0:
            raise LabError(f"{name}/{container}: SIG{sig} from {via} failed "
                           f"({res.returncode}): {res.stderr.strip()}")
        return f"{name}/{container}: SIG{sig} to its processes (from {via})"

    def containers(self, pod: str) -> list[str]:
        """The pod's containers (``istio-proxy`` included)."""
        return sorted(c["name"] for c in self._find(pod)["spec"]["containers"])

    def pause_container(self, pod: str, container: str) -> str:
        """SIGSTOP every process of the container."""
        return self._signal(pod, container, "STOP")

    def resume_container(self, pod: str, container: str) -> str:
        """SIGCONT every process of the container (idempotent)."""
        return self._signal(pod, container, "CONT")

    def container_paused(self, pod: str, container: str) -> bool:
        """Whether the container's PID 1 is stopped (``/proc/1/stat`` state ``T``)."""
        obj, via = self._container(pod, container)
        res = self.api.exec(self.namespace, obj["metadata"]["name"], via, ["cat", "/proc/1/stat"],
                            timeout_s=SIGNAL_TIMEOUT_S)
        return res.returncode == 0 and ") T " in res.stdout

    def container_cpu_limit(self, pod: str, container: str) -> int | None:
        """The container's CPU limit in millicores from the pod spec (None: unlimited)."""
        obj = self._find(pod)
        for c in obj["spec"]["containers"]:
            if c["name"] == container:
                limit = ((c.get("resources") or {}).get("limits") or {}).get("cpu")
                return None if limit is None else cpu_millicores(limit)
        raise ConfigError(f"container: pod {obj['metadata']['name']} has no container "
                          f"{container!r}")

    def set_container_cpu_limit(self, pod: str, container: str, millicores: int | None) -> str:
        """Patch the pod's ``resize`` subresource with the new limit (None: remove it).

        Raises:
            LabError: the cluster refused, e.g. no in-place resize (404) or a resize policy
                that needs a restart.
        """
        name = self._find(pod)["metadata"]["name"]
        value = None if millicores is None else f"{millicores}m"
        self.api.resize_pod(self.namespace, name, container, {"cpu": value})
        return f"{name}/{container}: cpu limit {value or 'none'} (in-place resize)"

    def container_usage(self, pod: str) -> dict[str, dict[str, Any]]:
        """Nothing: a cluster's container usage is its metrics pipeline's (no series)."""
        return {}

    def run_in_container(self, pod: str, container: str, argv: list[str], log_name: str) -> int:
        """Start ``argv`` detached in the pod's debug container (see the module docstring);
        returns its PID there (0 in a dry run). ``log_name`` is unused: output is discarded.

        Raises:
            ConfigError: a container the debug container does not target.
            LabError: the exec failed.
        """
        obj, via = self._container(pod, container)
        if via == SIDECAR:
            raise ConfigError(f"container: {container!r}: the debug container targets "
                              f"{app_container(obj)!r}; nothing runs in istio-proxy")
        name = obj["metadata"]["name"]
        res = self.api.exec(self.namespace, name, via,
                            ["sh", "-c", 'nohup "$@" >/dev/null 2>&1 & echo $!', "sh", *argv],
                            timeout_s=SIGNAL_TIMEOUT_S)
        if res.returncode != 0:
            raise LabError(f"{name}: cannot start {argv[:3]} in {via}: {res.stderr.strip()}")
        return int(res.stdout.strip() or 0)

    @property
    def dry_run(self) -> bool:
        """Whether the env only prints."""
        return bool(self.api.dry_run)

    @staticmethod
    def burner_argv(load_pct: float, burner_id: str) -> list[str]:
        """A shell burner for busybox/GNU userlands: 100 % spins; below that, each 100 ms it
        spins until ``/proc/uptime`` (centiseconds) has advanced ``load_pct / 10`` ticks, then
        sleeps the rest (a fractional ``sleep``: GNU coreutils and busybox have it); measured
        here: 50 % → 0.50 and 20 % → 0.20 of a CPU, the spinning ``cut`` processes included.
        ``$0`` names it after meshlab's burner, so ``pgrep -f`` finds it as the local one."""
        on_cs, off_s = max(1, round(load_pct / 10)), (100 - load_pct) / 1000
        now = "u=$(cut -d' ' -f1 /proc/uptime); u=${u%.*}${u#*.}"
        loop = ("while :; do :; done" if load_pct >= 100 else
                f"while :; do {now}; e=$((u+{on_cs})); while :; do {now}; "
                f"[ \"$u\" -ge \"$e\" ] && break; done; sleep {off_s:.3f}; done")
        return ["sh", "-c", loop, "meshlab.faults.cpu_burner", "--load-pct", f"{load_pct:g}",
                "--id", burner_id]
