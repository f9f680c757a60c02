"""``pod-kill`` on the kube env: a pod is deleted through the API (its controller creates it
again) and a container's main process is signalled from the pod's debug container (the app) or
from ``istio-proxy`` itself; ``inject`` returns once the cluster shows the kill, ``revert`` once
the pod is Ready again. Against the in-test API server with the real ``kubernetes`` client, and
in a dry run (printed, nothing sent)."""

from __future__ import annotations

import io

import pytest
from kube_fake_server import FakeKube, kube_env

from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.errors import ConfigError
from meshlab.faults.pod_kill import PodKill

NS = "meshlab-lab"
L2 = "fortio-server-l2-0"


def _kubelet(fake: FakeKube, signalled: list):
    """An exec handler playing the kubelet: a ``kill`` of PID 1 restarts the container."""
    def handle(pod, container, argv, stdin):
        signalled.append((pod, container, argv))
        if "kill -s" not in " ".join(argv):
            return 0, "", ""
        target = "istio-proxy" if container == "istio-proxy" else "main-app"
        for cs in fake.pods[(NS, pod)]["status"]["containerStatuses"]:
            if cs["name"] == target:
                cs["restartCount"] = cs.get("restartCount", 0) + 1
                cs["lastState"] = {"terminated": {"reason": "Error", "exitCode": 137}}
        return 0, "", ""
    return handle


def test_a_deleted_pod_is_waited_for_until_its_replacement_is_ready(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    fake.delete_polls = 3
    uid = fake.pods[(NS, L2)]["metadata"]["uid"]
    fault = PodKill(target=L2, ready_timeout_s=5)
    assert "deleted (grace 0 s)" in fault.inject(env)
    delete = [r for r in fake.mutating() if r.method == "DELETE" and r.path.endswith(L2)]
    assert len(delete) == 1 and delete[0].query.get("gracePeriodSeconds") == ["0"]
    out = fault.revert(env)
    assert fake.pods[(NS, L2)]["metadata"]["uid"] != uid  # a new pod, same name
    assert "ready again" in out and "'main-app': 0" in out


def test_a_killed_container_is_signalled_and_its_restart_seen(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    signalled: list = []
    fake.exec_handler = _kubelet(fake, signalled)
    fault = PodKill(target=L2, container="main-app")
    assert "killed container main-app" in fault.inject(env)
    assert signalled[-1] == (L2, "meshlab-debug", ["kill", "-s", "KILL", "1"])
    assert env.container_statuses(L2)["main-app"] == {
        "restarts": 1, "state": "running", "last_exit": {"reason": "Error", "code": 137}}
    assert "'main-app': 1" in fault.revert(env)
    PodKill(target=L2, container="istio-proxy", grace_s=2).inject(env)
    assert signalled[-1][:2] == (L2, "istio-proxy")
    assert signalled[-1][2][:2] == ["sh", "-c"] and "sleep 2" in signalled[-1][2][2]


def test_an_unknown_container_is_refused_before_anything_is_sent(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    before = len(fake.mutating())
    with pytest.raises(ConfigError, match="pod-kill: container: .*no container 'nope'"):
        PodKill(target=L2, container="nope").inject(env)
    assert len(fake.mutating()) == before


def test_a_dry_run_prints_the_delete_and_the_kill(opted_in_fake, tmp_path):
    fake = opted_in_fake
    api = DryRunApi(io.StringIO())
    lab = kube_env(fake, tmp_path, api=api, dry_run=True)
    lab.up()
    for fault in (PodKill(target=L2), PodKill(target=L2, container="main-app")):
        fault.inject(lab)
        fault.revert(lab)
    out = api.out.getvalue()
    assert f"kubectl delete pod -n {NS} {L2} --grace-period=0 --wait=false" in out
    assert f"kubectl exec -n {NS} {L2} -c meshlab-debug -- kill -s KILL 1" in out
    assert f"# wait until pod {L2} is Ready" in out
    assert fake.mutating() == []
