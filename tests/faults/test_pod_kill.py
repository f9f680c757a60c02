"""The local kubelet on a real lab: ``pod-kill`` of a container (restarted, CrashLoopBackOff on
the next exit), of a whole pod (recreated with the same name, restart counts 0), an OOM kill
seen as the container's restart (``OOMKilled``), and the endpoints: while L2 is not ready it is
out of kube-proxy's rules and of L1's sidecar EDS, and back once it is ready.
``lab`` and ``unchanged`` are in ``conftest.py``; the lab's CrashLoopBackOff is scaled by 0.1
(``manifests/fortio-layered/lab-cluster.yaml``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshlab.collectors.tcp_stats_ss import cluster_endpoints
from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.state import LabState
from meshlab.errors import ConfigError
from meshlab.faults.base import active
from meshlab.faults.pod_kill import PodKill
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hpk"
L1, L2 = "fortio-server-0", "fortio-server-l2-0"
L2_CLUSTER = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"
READY_S = 30.0


def _pids(lab) -> dict[str, int]:
    return {k: v for k, v in LabState.load(LAB).pids.items() if k.startswith(L2 + "/")}


def _l1_eds_hosts(lab) -> set[str]:
    return cluster_endpoints(lab.sidecar_admin(L1, "/clusters")).get(L2_CLUSTER, set())


def _kube_proxy_rules(lab) -> str:
    return lab.node_shell("worknode5").run(["iptables-save"]).stdout


def _status(lab) -> dict:
    out = subprocess.run([sys.executable, "-m", "meshlab", "status", "--lab", LAB],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return json.loads(out)


def test_a_killed_container_is_restarted_then_backs_off(lab, unchanged):
    before = _pids(lab)
    with active(PodKill(target=L2, container="main-app", ready_timeout_s=READY_S), lab):
        pass  # revert waits until the pod is ready again
    after = _pids(lab)
    assert after[f"{L2}/main-app"] != before[f"{L2}/main-app"]
    assert after[f"{L2}/istio-proxy"] == before[f"{L2}/istio-proxy"]  # only the one container
    status = _status(lab)
    assert status["containers"][f"{L2}/main-app"]["restarts"] == 1
    assert status["containers"][f"{L2}/istio-proxy"]["restarts"] == 0
    assert status["not_ready"] == []
    # the second exit waits out a back-off (1 s at the lab's scale) with the pod not ready
    lab.kill_pod(L2, "main-app", 0)
    waiting = wait_until(lambda: lab.container_statuses(L2)["main-app"],
                         lambda s: s.get("reason") == "CrashLoopBackOff", timeout_s=5,
                         what="main-app in CrashLoopBackOff")
    assert waiting["state"] == "waiting" and waiting["last_exit"]["reason"] == "Error"
    assert lab.wait_pod_ready(L2, READY_S) > 0
    assert lab.container_statuses(L2)["main-app"]["restarts"] == 2


def test_a_not_ready_pod_leaves_the_endpoints_until_it_is_ready(lab, unchanged):
    l2_ip = lab.pod(L2).ip
    wait_until(lambda: _l1_eds_hosts(lab), lambda hosts: hosts == {f"{l2_ip}:8080"},
               timeout_s=5, what="L2 in L1's EDS")  # a push after an earlier test's restart
    assert f"--to-destination {l2_ip}:8080" in _kube_proxy_rules(lab)
    lab.kill_pod(L2, "istio-proxy", 0)  # the sidecar: the pod is not ready until it listens
    wait_until(lambda: _l1_eds_hosts(lab), lambda hosts: hosts == set(), timeout_s=5,
               what="L2 out of L1's EDS")
    rules = wait_until(lambda: _kube_proxy_rules(lab),
                       lambda text: f"--to-destination {l2_ip}:8080" not in text, timeout_s=5,
                       what="L2 out of kube-proxy's rules")
    assert "-j REJECT" in rules  # no endpoint left: kube-proxy rejects, as for an empty Service
    lab.wait_pod_ready(L2, READY_S)
    wait_until(lambda: _l1_eds_hosts(lab), lambda hosts: hosts == {f"{l2_ip}:8080"},
               timeout_s=5, what="L2 back in L1's EDS")
    assert f"--to-destination {l2_ip}:8080" in _kube_proxy_rules(lab)


def test_a_deleted_pod_is_created_again_with_fresh_restart_counts(lab, unchanged):
    lab.kill_pod(L2, "main-app", 0)  # one restart first, forgotten with the pod
    lab.wait_pod_ready(L2, READY_S)
    before = _pids(lab)
    fault = PodKill(target=L2, grace_s=1.0, ready_timeout_s=READY_S)
    with active(fault, lab) as _:
        assert set(_pids(lab)) <= set(before)  # inject returns once they are gone
    after = _pids(lab)
    assert set(after) == set(before) and not set(after.values()) & set(before.values())
    assert {c: s["restarts"] for c, s in lab.container_statuses(L2).items()} == {
        "istio-proxy": 0, "main-app": 0}


def test_an_oom_kill_is_the_containers_restart(lab, unchanged):
    groups = Cgroups()
    rel = Cgroups.rel(LAB, L2, "main-app")
    groups.set_memory_limit(rel, groups.memory_bytes(rel) + (12 << 20))  # the restart puts
    # the manifest's (none) back. A hog of 16 MiB of touched pages overflows the limit while
    # it is still smaller than the app (~30 MB resident), so the OOM killer picks the app
    # (the largest); with the app gone the hog fits. On kernels that honour it, the hog's
    # oom_score_adj -1000 makes it unkillable too (this machine's kernel ignores the write).
    hog = ("open('/proc/self/oom_score_adj', 'w').write('-1000'); b = b'x' * (16 << 20); "
           "print('allocated', flush=True)")
    lab.run_in_container(L2, "main-app", [sys.executable, "-c", hog], "oom-hog")
    status = wait_until(lambda: lab.container_statuses(L2)["main-app"],
                        lambda s: s["restarts"] >= 1, timeout_s=10, what="main-app restarted")
    assert status["last_exit"] == {"reason": "OOMKilled", "code": 137}
    lab.wait_pod_ready(L2, READY_S)
    assert groups.oom_kills(rel) >= 1


def test_bad_pod_kill_parameters_change_nothing(lab, unchanged):
    with pytest.raises(ConfigError, match="grace_s"):
        PodKill(target=L2, grace_s=-1)
    with pytest.raises(ConfigError, match="container"):
        PodKill(target=L2, container="nope").inject(lab)
    with pytest.raises(ConfigError, match="target"):
        PodKill(target="no-such-pod").inject(lab)
    assert lab.status()["not_ready"] == []
