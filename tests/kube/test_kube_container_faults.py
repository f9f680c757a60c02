"""``container-pause`` and ``cpu-limit`` on the kube env, against the in-test API server with the
real ``kubernetes`` client: the pause is SIGSTOP/SIGCONT from the debug container (the app) or
from inside ``istio-proxy``; the CPU limit is a strategic merge patch of the pod's ``resize``
subresource, restored on revert, and refused with the reason where the cluster has no in-place
resize (404). Also printed in a dry run."""

from __future__ import annotations

import io

import pytest
from kube_fake_server import FakeKube, kube_env

from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.errors import LabError
from meshlab.faults.base import active
from meshlab.faults.container_pause import ContainerPause
from meshlab.faults.cpu_limit import CpuLimit
from meshlab.faults.cpu_stress import CpuStress

NS = "meshlab-lab"
L2 = "fortio-server-l2-0"


def _limits(fake: FakeKube, container: str) -> dict:
    spec = next(c for c in fake.pods[(NS, L2)]["spec"]["containers"] if c["name"] == container)
    return (spec.get("resources") or {}).get("limits") or {}


def test_pause_stops_the_apps_processes_from_the_debug_container(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    stopped: dict[str, bool] = {}

    def kubelet(pod, container, argv, stdin):
        if argv[:2] == ["sh", "-c"] and "kill -s" in argv[2]:
            stopped[container] = "STOP" in argv[2]
        if argv == ["cat", "/proc/1/stat"]:
            return 0, f"1 (fortio) {'T' if stopped.get(container) else 'S'} 0 1", ""
        return 0, "", ""

    fake.exec_handler = kubelet
    with active(ContainerPause(target=L2), env):
        assert stopped == {"meshlab-debug": True}
        assert env.container_paused(L2, "main-app")
    assert stopped == {"meshlab-debug": False} and not env.container_paused(L2, "main-app")
    with active(ContainerPause(target=L2, container="istio-proxy"), env):
        assert stopped["istio-proxy"] is True
    assert stopped["istio-proxy"] is False


def test_cpu_limit_resizes_in_place_and_restores(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    with active(CpuLimit(target=L2, container="istio-proxy", cpu_m=100), env):
        assert _limits(fake, "istio-proxy") == {"cpu": "100m"}
        assert env.container_cpu_limit(L2, "istio-proxy") == 100
    assert _limits(fake, "istio-proxy") == {}  # no limit before: removed again
    patch = [r for r in fake.mutating() if r.path.endswith(f"/pods/{L2}/resize")]
    assert len(patch) == 2
    assert patch[0].headers.get("Content-Type") == "application/strategic-merge-patch+json"


def test_cpu_limit_is_refused_where_the_cluster_cannot_resize(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    fake.resize_supported = False
    with pytest.raises(LabError, match="resize istio-proxy .* HTTP 404"):
        CpuLimit(target=L2, container="istio-proxy", cpu_m=100).inject(env)


def test_a_dry_run_prints_the_signals_and_the_resize(opted_in_fake, tmp_path):
    fake = opted_in_fake
    api = DryRunApi(io.StringIO())
    lab = kube_env(fake, tmp_path, api=api, dry_run=True)
    lab.up()
    for fault in (ContainerPause(target=L2), CpuLimit(target=L2, cpu_m=200)):
        fault.inject(lab)
        fault.revert(lab)
    out = api.out.getvalue()
    assert f"kubectl exec -n {NS} {L2} -c meshlab-debug -- sh -c 'kill -s STOP -1" in out
    assert f"kubectl patch pod -n {NS} {L2} --subresource resize --patch" in out
    assert '"cpu": "200m"' in out
    assert fake.mutating() == []


def test_cpu_stress_runs_shell_burners_in_the_debug_container(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    running: list[str] = []

    def kubelet(pod, container, argv, stdin):
        if argv[:2] == ["sh", "-c"] and argv[2].startswith("nohup"):
            running.append(" ".join(argv[4:]))
            return 0, f"{100 + len(running)}\n", ""
        if argv[:2] == ["pgrep", "-f"]:
            return (0, "".join(f"{101 + i}\n" for i in range(len(running))), "") if running \
                else (1, "", "")
        if argv[:2] == ["pkill", "-TERM"]:
            running.clear()
        return 0, "", ""

    fake.exec_handler = kubelet
    with active(CpuStress(target=L2, workers=2, load_pct=100, stress_id="cd34"), env):
        burner = "sh -c while :; do :; done meshlab.faults.cpu_burner --load-pct 100 --id cd34"
        assert running == [burner] * 2
    assert running == []
