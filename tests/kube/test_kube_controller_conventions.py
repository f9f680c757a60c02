"""What the controllers and the garbage collector of a real cluster do, as the in-test API
server (:mod:`fake_controllers`) plays them, and the client branches that depend on it:
ownership (Deployment → ReplicaSet ``<deploy>-<hash>`` → pods ``<rs>-<5 chars>``, StatefulSet
→ pods ``<sts>-<ordinal>``, every reference ``controller: true``), graceful and forced pod
deletion with the controller's replacement (same name for a StatefulSet, a new name for a
ReplicaSet), and the refusals of faults whose CRD group the cluster does not serve.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from kube_fake_server import LAB

from meshlab.envs.kube.env import KubeEnv
from meshlab.envs.kube.ready import workload_of
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS
from meshlab.errors import ConfigError, LabError
from meshlab.faults.dns_error import DnsError
from meshlab.faults.http_fault import HttpFault
from meshlab.faults.pod_kill import PodKill

NS = "meshlab-lab"
L2 = "fortio-server-l2-0"
ECHO = {"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": "mark", "labels": {"app": "echo"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "echo"}},
                 "template": {"metadata": {"labels": {"app": "echo"}}, "spec": {
                     "affinity": {"nodeAffinity": {
                         "requiredDuringSchedulingIgnoredDuringExecution": {
                             "nodeSelectorTerms": [{"matchExpressions": [{
                                 "key": "kubernetes.io/hostname", "operator": "In",
                                 "values": ["worknode6"]}]}]}}},
                     "containers": [{"name": "main-app", "image": "fortio/fortio",
                                     "args": ["server"]}]}}}}


@pytest.fixture
def deployment_lab(opted_in_fake, tmp_path) -> KubeEnv:
    """The base lab plus a two-replica Deployment ``echo``, up on the fake."""
    overlay = tmp_path / "echo-overlay"
    overlay.mkdir()
    (overlay / "echo.yaml").write_text(yaml.safe_dump(ECHO))
    settings = KubeSettings(kubeconfig=opted_in_fake.kubeconfig(tmp_path), ready_timeout_s=5.0)
    env = KubeEnv([DEFAULT_MANIFESTS, overlay], settings, lab=LAB, poll_s=0.02)
    env.up()
    return env


def _owner(obj: dict) -> dict:
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref["controller"] is True and ref["uid"]
    return ref


def test_deployment_pods_belong_to_a_replicaset_of_the_template_hash(opted_in_fake,
                                                                      deployment_lab):
    fake = opted_in_fake
    (rs_key, rs), = [(k, o) for k, o in fake.objects.items() if o["kind"] == "ReplicaSet"]
    deploy = fake.objects[("/apis/apps/v1/deployments", NS, "echo")]
    assert _owner(rs)["uid"] == deploy["metadata"]["uid"] and _owner(rs)["kind"] == "Deployment"
    pth = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs_key[2] == f"echo-{pth}"
    pods = [p for (_, n), p in fake.pods.items() if n.startswith("echo-")]
    assert len(pods) == 2
    for pod in pods:
        assert re.fullmatch(f"echo-{pth}-[bcdfghjklmnpqrstvwxz2456789]{{5}}",
                            pod["metadata"]["name"])
        assert _owner(pod)["kind"] == "ReplicaSet" and _owner(pod)["uid"] == rs["metadata"]["uid"]
        assert pod["metadata"]["labels"]["pod-template-hash"] == pth
        assert workload_of(pod) == "echo"
    sts_pod = fake.pods[(NS, L2)]
    assert (_owner(sts_pod)["kind"], _owner(sts_pod)["name"]) == ("StatefulSet",
                                                                  "fortio-server-l2")
    assert sts_pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == L2
    assert {p.name: p.workload for p in deployment_lab.pods()}[pods[0]["metadata"]["name"]] == \
        "echo"
    assert deployment_lab.pod("echo-1").name == sorted(p["metadata"]["name"] for p in pods)[1]


def test_a_deleted_deployment_pod_is_followed_to_its_replacement(opted_in_fake,
                                                                 deployment_lab):
    fake, env = opted_in_fake, deployment_lab
    victim = env.pod("echo-0").name
    fault = PodKill(target="echo-0", ready_timeout_s=5)
    assert f"{victim}: deleted" in fault.inject(env)
    assert (NS, victim) not in fake.pods  # forced (grace 0): gone at once
    out = fault.revert(env)
    assert out.startswith(f"{victim}: ready again") and "'main-app': 0" in out
    names = sorted(n for (_, n) in fake.pods if n.startswith("echo-"))
    assert len(names) == 2 and victim not in names  # the ReplicaSet's new name


def test_a_graceful_delete_terminates_then_the_statefulset_recreates(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    fake.delete_polls = 6
    uid = fake.pods[(NS, L2)]["metadata"]["uid"]
    fault = PodKill(target=L2, grace_s=5, ready_timeout_s=5)
    fault.inject(env)
    delete = [r for r in fake.requests if r.method == "DELETE"][-1]
    assert delete.query["gracePeriodSeconds"] == ["5"]
    pod = fake.pods[(NS, L2)]["metadata"]
    assert (pod["deletionTimestamp"], pod["deletionGracePeriodSeconds"]) == (
        "2026-01-01T00:00:00Z", 5)
    assert L2 not in [p.name for p in env.pods()]  # terminating: not a lab pod
    assert "ready again" in fault.revert(env)
    assert fake.pods[(NS, L2)]["metadata"]["uid"] != uid
    assert "deletionTimestamp" not in fake.pods[(NS, L2)]["metadata"]


def test_deleting_a_workload_in_the_foreground_waits_for_its_pods(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    fake.delete_polls = 3
    assert env._lab_namespace().sweep()[:1] == ["StatefulSet/fortio-server-l2"]
    assert not [k for k in fake.pods if k[1].startswith("fortio-server")]
    assert all(o["kind"] != "StatefulSet" or o["metadata"].get("deletionTimestamp")
               for o in fake.objects.values())


def _no_dump(pod: str, method: str, path: str) -> tuple[int, str]:
    return 200, json.dumps({"configs": []})


def test_an_http_fault_without_istio_networking_names_the_404(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    fake.crd_groups.discard("networking.istio.io")
    fake.admin_handler = _no_dump
    fault = HttpFault(host="fortio-server-l2", abort_http_status=503)
    with pytest.raises(LabError, match="apply VirtualService/meshlab-http-fault-fortio-server-l2 "
                                       f"in {NS}: HTTP 404 Not Found: the server could not find "
                                       "the requested resource"):
        fault.inject(env)
    assert "deleted no VirtualService(s)" in fault.revert(env)


def test_dns_error_needs_chaos_mesh_and_uses_its_plural(opted_in_fake, base_lab):
    fake, env = opted_in_fake, base_lab
    fault = DnsError(patterns=["fortio-server-l2.*"], max_duration_s=60)
    assert "DNSChaos/meshlab-dns-error-" in fault.inject(env)
    (post,) = [r for r in fake.mutating() if "chaos-mesh.org" in r.path]
    assert post.path == f"/apis/chaos-mesh.org/v1alpha1/namespaces/{NS}/dnschaos"
    assert f"meshlab-dns-error-{fault.fault_id}" in fault.revert(env)
    assert not [k for k in fake.objects if "chaos-mesh.org" in k[0]]
    fake.crd_groups.discard("chaos-mesh.org")
    with pytest.raises(ConfigError, match="no Chaos Mesh DNSChaos kind"):
        DnsError(patterns=["x.*"]).inject(env)


def test_the_api_server_clock_ticks_once_per_request(opted_in_fake, base_lab):
    """Why the tests need no sleeps: deletion progresses with requests, not time."""
    fake = opted_in_fake
    fake.delete_polls = 2
    base_lab.api.delete_pod(NS, L2, 30)
    states = []
    for _ in range(4):
        pod = (base_lab.api.list_pods(NS) and fake.pods.get((NS, L2))) or {"metadata": {}}
        states.append((bool(pod["metadata"].get("deletionTimestamp")),
                       pod["metadata"].get("uid")))
    assert [s[0] for s in states] == [True, True, False, False]
    assert states[2][1] == states[3][1] != states[0][1]

