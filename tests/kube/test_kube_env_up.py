"""KubeEnv.up / down and the guardrails, through the real ``kubernetes`` client against the
in-test API server (:mod:`kube_fake_server`): the exact requests sent, readiness errors that
name the pod and the reason, and refusals that send no mutating request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kube_fake_server import LAB, OPT_IN, FakeKube, kube_env

from meshlab.envs.kube.api import KubeApi, api_client
from meshlab.envs.kube.guardrails import GuardrailError
from meshlab.errors import LabError

NS = "meshlab-lab"
HOST = "kubernetes.io/hostname"
MANAGED = {"app.kubernetes.io/managed-by": "meshlab", "meshlab.io/lab": LAB}


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


def _nodes(fake: FakeKube, *names: str, labelled: bool = True) -> None:
    for name in names:
        fake.add_node(name, OPT_IN if labelled else {})


def test_up_creates_the_labelled_namespace_and_applies_every_object(fake, tmp_path):
    _nodes(fake, "worknode5", "worknode6", "worknode7")
    env = kube_env(fake, tmp_path, ("ha-l2", "ha-l2-timeouts"))
    env.up()

    # guardrail and leftover reads come before the first change
    assert [(r.method, r.path) for r in fake.requests[:2]] == [
        ("GET", "/api/v1/nodes"), ("GET", f"/api/v1/namespaces/{NS}")]
    sent = [(r.method, r.path, r.body["metadata"]["name"]) for r in fake.mutating()]
    assert sent == [
        ("POST", "/api/v1/namespaces", NS),
        ("POST", f"/api/v1/namespaces/{NS}/services", "fortio-server-l2"),
        ("POST", f"/api/v1/namespaces/{NS}/services", "fortio-server"),
        ("POST", f"/apis/networking.istio.io/v1/namespaces/{NS}/destinationrules",
         "fortio-server-l2"),
        ("POST", f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices",
         "fortio-server-l2"),
        ("POST", f"/apis/telemetry.istio.io/v1/namespaces/{NS}/telemetries",  # manifests/cluster
         "meshlab-access-logs"),
        ("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets", "fortio-server-l2"),
        ("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets", "fortio-server"),
        ("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets", "netshoot"),
    ]
    ns_body, *objects = [r.body for r in fake.mutating()]
    assert ns_body["metadata"]["labels"] == {**MANAGED, "istio-injection": "enabled"}
    for body in objects:
        assert body["metadata"]["namespace"] == NS
        assert MANAGED.items() <= body["metadata"]["labels"].items()

    pod_specs = {b["metadata"]["name"]: b["spec"]["template"]["spec"] for b in objects
                 if b["kind"] == "StatefulSet"}
    for single in ("fortio-server", "netshoot"):  # the manifests' affinity → one node
        assert pod_specs[single]["nodeSelector"] == {HOST: "worknode5"}
        assert "affinity" not in pod_specs[single]
    l2 = pod_specs["fortio-server-l2"]  # two replicas on two nodes: affinity + spread
    assert l2["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": HOST, "operator": "In", "values": ["worknode6", "worknode7"]}]}]}
    assert l2["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert l2["topologySpreadConstraints"][0]["topologyKey"] == HOST
    services = [b for b in objects if b["kind"] == "Service"]
    assert {s["spec"]["type"] for s in services} == {"ClusterIP"}  # NodePort in the manifests
    assert all("nodePort" not in p for s in services for p in s["spec"]["ports"])

    assert [(p.name, p.node, p.meshed, p.namespace) for p in env.pods()] == [
        ("fortio-server-l2-0", "worknode6", True, NS),
        ("fortio-server-l2-1", "worknode7", True, NS),
        ("fortio-server-0", "worknode5", True, NS),
        ("netshoot-0", "worknode5", False, NS)]
    assert env.pod("fortio-server-l2").name == "fortio-server-l2-0"
    assert env.status()["status"] == "up"


def test_node_map_places_pods_on_cluster_nodes_and_reports_lab_names(fake, tmp_path):
    _nodes(fake, "ip-10-0-1-5", "ip-10-0-1-6")
    env = kube_env(fake, tmp_path, node_map={"worknode5": "ip-10-0-1-5",
                                             "worknode6": "ip-10-0-1-6"})
    env.up()
    selectors = {r.body["metadata"]["name"]: r.body["spec"]["template"]["spec"]["nodeSelector"]
                 for r in fake.mutating() if r.body["kind"] == "StatefulSet"}
    assert selectors == {"fortio-server-l2": {HOST: "ip-10-0-1-6"},
                         "fortio-server": {HOST: "ip-10-0-1-5"},
                         "netshoot": {HOST: "ip-10-0-1-5"}}
    assert {p.name: p.node for p in env.pods()} == {
        "fortio-server-l2-0": "worknode6", "fortio-server-0": "worknode5",
        "netshoot-0": "worknode5"}
    assert env.describe()["topology"]["nodes"][0]["cluster_node"] == "ip-10-0-1-5"


def test_readiness_timeout_names_the_pod_and_the_container_reason(fake, tmp_path):
    _nodes(fake, "worknode5", "worknode6")
    fake.not_ready["fortio-server-l2"] = (
        "ImagePullBackOff", 'Back-off pulling image "docker.io/fortio/fortio"')
    env = kube_env(fake, tmp_path, ready_timeout_s=0.3)
    with pytest.raises(LabError) as err:
        env.up()
    assert str(err.value) == (
        f"pod {NS}/fortio-server-l2-0 not Ready after 0.3 s: container main-app: "
        'ImagePullBackOff: Back-off pulling image "docker.io/fortio/fortio"')
    # the half-built lab is deleted again
    assert (fake.mutating()[-1].method, fake.mutating()[-1].path) == (
        "DELETE", f"/api/v1/namespaces/{NS}")
    assert NS not in fake.namespaces


def test_readiness_timeout_of_an_unscheduled_pod_names_its_last_event(fake, tmp_path):
    _nodes(fake, "worknode5", "worknode6")
    fake.unscheduled["netshoot"] = (
        "FailedScheduling", "0/2 nodes are available: 2 Insufficient memory.")
    env = kube_env(fake, tmp_path, ready_timeout_s=0.2)
    with pytest.raises(LabError, match=f"pod {NS}/netshoot-0 not Ready after 0.2 s: last event "
                                       "FailedScheduling: 0/2 nodes are available: 2 "
                                       "Insufficient memory."):
        env.up()
    assert any(r.path == f"/api/v1/namespaces/{NS}/events"
               and r.query["fieldSelector"] == ["involvedObject.name=netshoot-0"]
               for r in fake.requests)


@pytest.mark.parametrize("settings, nodes, labelled, refusal", [
    ({"namespace": "chaos"}, ("worknode5", "worknode6"), True,
     "refused: namespace 'chaos' is not in allowed_namespaces ['meshlab-lab']; add it"),
    ({"namespace": "kube-system", "allowed_namespaces": ["kube-system"]},
     ("worknode5", "worknode6"), True, "refused: namespace 'kube-system' is a system namespace"),
    ({"max_pods": 2}, ("worknode5", "worknode6"), True,
     "refused: the lab runs 3 pods, more than max_pods=2; raise max_pods"),
    ({}, ("worknode5", "worknode6"), False,
     ("does not carry the opt-in label meshlab.io/chaos=allowed; if chaos is allowed on it: "
      "kubectl label node worknode5 meshlab.io/chaos=allowed")),
    ({}, ("worknode5",), True, "needs node 'worknode6', which the cluster does not have"),
])
def test_guardrails_refuse_before_any_mutating_request(fake, tmp_path, settings, nodes,
                                                       labelled, refusal):
    _nodes(fake, *nodes, labelled=labelled)
    env = kube_env(fake, tmp_path, **settings)
    with pytest.raises(GuardrailError) as err:
        env.up()
    assert refusal in str(err.value)
    assert fake.mutating() == []
    assert {r.path for r in fake.requests} <= {"/api/v1/nodes"}


def test_a_namespace_meshlab_did_not_create_is_never_deleted(fake, tmp_path):
    _nodes(fake, "worknode5", "worknode6")
    fake.namespaces[NS] = {"metadata": {"name": NS, "labels": {"team": "payments"}}}
    env = kube_env(fake, tmp_path)
    for step in (env.up, env.down):
        with pytest.raises(GuardrailError, match=f"namespace '{NS}' exists and was not created "
                                                 "by meshlab .*yourself \\(kubectl delete "
                                                 f"namespace {NS}\\)"):
            step()
    assert fake.mutating() == []
    assert NS in fake.namespaces
    fake.namespaces[NS]["metadata"]["labels"] = {**MANAGED, "meshlab.io/lab": "nightly"}
    with pytest.raises(GuardrailError, match=f"namespace '{NS}' holds meshlab lab 'nightly', "
                                             f"not '{LAB}'"):
        env.down()
    assert fake.mutating() == []


def test_down_deletes_the_namespace_and_waits_until_it_is_gone(fake, tmp_path):
    _nodes(fake, "worknode5", "worknode6")
    env = kube_env(fake, tmp_path)
    env.up()
    fake.delete_polls = 3  # answers Terminating three times, then 404
    before = len(fake.requests)
    assert env.down() == [NS]
    after = [(r.method, r.path) for r in fake.requests[before:]]
    assert after == [("GET", f"/api/v1/namespaces/{NS}"), ("DELETE", f"/api/v1/namespaces/{NS}"),
                     *[("GET", f"/api/v1/namespaces/{NS}")] * 4]
    assert fake.requests[before + 1].query == {"propagationPolicy": ["Foreground"]}
    assert env.status() == {"lab": LAB, "env": "kube", "namespace": NS, "status": "down",
                            "pods": {}}
    assert env.down() == []  # idempotent: nothing left, nothing sent
    assert len([r for r in fake.mutating() if r.method == "DELETE"]) == 1


def test_a_kept_namespace_is_swept_not_deleted(fake, tmp_path):
    """The nightly runner's namespace (manifests/nightly/00-namespaces.yaml) stays: only the
    objects meshlab applied go, at up (a dead run's leftovers) and at down."""
    _nodes(fake, "worknode5", "worknode6", "worknode7")
    kept = {"app.kubernetes.io/managed-by": "meshlab", "meshlab.io/keep-namespace": "true",
            "istio-injection": "enabled"}
    fake.namespaces[NS] = {"metadata": {"name": NS, "labels": dict(kept)}}
    kube_env(fake, tmp_path, ("ha-l2",)).up()  # claims it; then dies, leaving its objects
    env = kube_env(fake, tmp_path)
    before = len(fake.requests)
    env.up()
    changes = [(r.method, r.path.rsplit("/", 2)[-2:]) for r in fake.requests[before:]
               if r.method in ("DELETE", "PATCH")]
    assert changes == [
        ("DELETE", ["statefulsets", "fortio-server-l2"]),
        ("DELETE", ["statefulsets", "fortio-server"]),
        ("DELETE", ["statefulsets", "netshoot"]), ("DELETE", ["services", "fortio-server-l2"]),
        ("DELETE", ["services", "fortio-server"]),
        ("DELETE", ["telemetries", "meshlab-access-logs"])]
    assert next(r for r in fake.requests[before:] if r.path.endswith("/statefulsets")).query == {
        "labelSelector": ["app.kubernetes.io/managed-by=meshlab"]}
    assert fake.namespaces[NS]["metadata"]["labels"] == {**kept, "meshlab.io/lab": LAB}
    assert [p.name for p in env.pods()] == ["fortio-server-l2-0", "fortio-server-0", "netshoot-0"]
    assert env.down() == [NS]
    assert all(r.method != "DELETE" or r.path != f"/api/v1/namespaces/{NS}"
               for r in fake.requests)
    assert [r.body for r in fake.requests if r.path == f"/api/v1/namespaces/{NS}"
            and r.method == "PATCH"] == [{"metadata": {"labels": {"meshlab.io/lab": LAB}}},
                                         {"metadata": {"labels": {"meshlab.io/lab": None}}}]
    assert fake.namespaces[NS]["metadata"]["labels"] == kept  # claim released
    assert fake.objects == {} and fake.pods == {}


def test_apply_creates_or_replaces_keeping_a_service_cluster_ip(fake, tmp_path):
    api = KubeApi(api_client(fake.kubeconfig(tmp_path), None))
    api.create_namespace(NS, MANAGED)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
           "spec": {"selector": {"app": "echo"}, "ports": [{"port": 9000}]}}
    assert api.apply(NS, svc) == "created"
    assert api.apply(NS, svc) == "replaced"
    post, put = fake.mutating()[-2:]
    assert (post.method, put.method, put.path) == (
        "POST", "PUT", f"/api/v1/namespaces/{NS}/services/echo")
    assert put.body["metadata"]["resourceVersion"] == "1"
    assert put.body["spec"]["clusterIP"] == "10.96.0.10"
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "echo"}, "spec": {"host": "echo"}}
    assert [api.apply(NS, rule) for _ in range(2)] == ["created", "replaced"]
    assert [(r.method, r.path) for r in fake.mutating()[-3:]] == [
        ("POST", f"/apis/networking.istio.io/v1/namespaces/{NS}/destinationrules"),
        ("POST", f"/apis/networking.istio.io/v1/namespaces/{NS}/destinationrules"),
        ("PUT", f"/apis/networking.istio.io/v1/namespaces/{NS}/destinationrules/echo")]
    with pytest.raises(LabError, match=f'create namespace {NS}: HTTP 409 .*already exists'):
        api.create_namespace(NS, MANAGED)
