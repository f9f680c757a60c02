"""The REST conventions of a real API server, through the real ``kubernetes`` client and the
in-test API server, and the client branches of :mod:`meshlab.envs.kube.api` that handle them:
Failure ``Status`` bodies and their HTTP codes (403 RBAC and terminating namespace, 404 and the
generic 404 of a group not served, 409 AlreadyExists / ``object is being deleted`` / Conflict,
422 Invalid with field causes, 400 for a malformed selector), set-based label selectors, and
deletion that takes a while (``deletionTimestamp``, foreground cascading).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_schema import SelectorError, parse_selector, selects
from kube_fake_server import LAB, OPT_IN, FakeKube, kube_env

from meshlab.envs.kube.api import ApiError, KubeApi, api_client
from meshlab.errors import LabError

NS = "meshlab-lab"
MANAGED = {"app.kubernetes.io/managed-by": "meshlab", "meshlab.io/lab": LAB}
STS = "/apis/apps/v1/statefulsets"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


@pytest.fixture
def api(fake, tmp_path) -> KubeApi:
    """A facade on ``fake`` polling every 10 ms, with the lab namespace created."""
    kube = KubeApi(api_client(fake.kubeconfig(tmp_path), None), poll_s=0.01, wait_s=5)
    kube.create_namespace(NS, MANAGED)
    return kube


def _service(name: str = "echo", port: int = 9000, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}


def _statefulset(name: str = "echo", replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "labels": dict(MANAGED)},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": "n1"},
                                           "containers": [{"name": "main-app",
                                                           "image": "busybox"}]}}}}


def test_rbac_refusals_are_403_with_the_verb_and_resource(fake, api):
    fake.forbid("pods", "list")
    with pytest.raises(ApiError, match=f'list pods in {NS}: HTTP 403 Forbidden: pods is '
                                       f'forbidden: User "tester" cannot list resource "pods" in '
                                       f'API group "" in the namespace "{NS}"') as err:
        api.list_pods(NS)
    assert err.value.status == 403
    fake.forbid("statefulsets", "create")
    with pytest.raises(LabError, match="statefulsets.apps is forbidden: .*cannot create "
                                       'resource "statefulsets" in API group "apps"'):
        api.apply(NS, _statefulset())


def test_missing_objects_are_404_and_none_where_missing_is_fine(fake, api):
    assert api.read_namespace("elsewhere") is None
    assert api.delete_namespace("elsewhere") is False
    with pytest.raises(ApiError, match=f'read pod {NS}/nope: HTTP 404 Not Found: pods "nope" '
                                       'not found'):
        api.read_pod(NS, "nope")
    assert api.delete_labelled(NS, "v1", "Service", "app=none") == []


def test_a_group_not_installed_is_the_generic_404(fake, api):
    fake.crd_groups.discard("networking.istio.io")
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "echo"}, "spec": {"host": "echo"}}
    with pytest.raises(LabError, match=f"apply DestinationRule/echo in {NS}: HTTP 404 Not Found: "
                                       "the server could not find the requested resource"):
        api.apply(NS, rule)
    assert api.delete_labelled(NS, "networking.istio.io/v1", "VirtualService", "a=b") == []
    assert api.custom.get_api_resources("chaos-mesh.org", "v1alpha1").resources[0].name == \
        "dnschaos"  # discovery of a group that is installed


@pytest.mark.parametrize("body,field", [
    ({**_service(), "metadata": {"labels": {}}},
     '"" is invalid: metadata.name: Required value: name or generateName is required'),
    (_service("Echo_1"), ('"Echo_1" is invalid: metadata.name: Invalid value: "Echo_1": '
                          "must be a DNS-1035 label")),
    (_service(port=70000), ('"echo" is invalid: spec.ports\\[0\\].port: Invalid value: 70000: '
                            "must be between 1 and 65535, inclusive")),
])
def test_invalid_objects_are_422_naming_the_field(fake, api, body, field):
    with pytest.raises(ApiError, match=f"HTTP 422 Unprocessable Entity: Service {field}") as err:
        api.apply(NS, body)
    assert err.value.status == 422
    assert fake.objects == {}


def test_a_replace_keeps_the_immutable_cluster_ip(fake, api):
    assert [api.apply(NS, _service()) for _ in range(2)] == ["created", "replaced"]
    stored = fake.objects[("/api/v1/services", NS, "echo")]
    assert (stored["spec"]["clusterIP"], stored["metadata"]["resourceVersion"]) == (
        "10.96.0.10", "2")
    changed = {**_service(), "spec": {**_service()["spec"], "clusterIP": "10.96.0.99"},
               "metadata": {"name": "echo", "resourceVersion": "2"}}
    with pytest.raises(LabError, match="spec.clusterIP: Invalid value: .*field is immutable"):
        api._call("replace", lambda: api.core.replace_namespaced_service(
            "echo", NS, changed, _preload_content=False))
    stale = {**_service(), "metadata": {"name": "echo", "resourceVersion": "1"}}
    with pytest.raises(ApiError, match='409 Conflict: Operation cannot be fulfilled on services '
                                       '"echo": the object has been modified'):
        api._call("replace", lambda: api.core.replace_namespaced_service(
            "echo", NS, stale, _preload_content=False))


def test_apply_waits_out_the_previous_incarnation_being_deleted(fake, api):
    fake.delete_polls = 3
    api.apply(NS, _statefulset())
    old = fake.objects[(STS, NS, "echo")]["metadata"]["uid"]
    assert api.delete_labelled(NS, "apps/v1", "StatefulSet", "meshlab.io/lab=kube1") == ["echo"]
    terminating = fake.objects[(STS, NS, "echo")]["metadata"]  # foreground: pods go first
    assert (terminating["deletionTimestamp"], terminating["finalizers"]) == (
        "2026-01-01T00:00:00Z", ["foregroundDeletion"])
    assert all(p["metadata"].get("deletionTimestamp") for p in fake.pods.values())
    before = len(fake.requests)
    assert api.apply(NS, _statefulset()) == "created"
    sent = [r.method for r in fake.requests[before:]]
    assert sent[0] == "POST" and sent[-1] == "POST" and set(sent[1:-1]) == {"GET"}
    assert len(sent) > 3  # it polled while the old one was still there
    assert fake.objects[(STS, NS, "echo")]["metadata"]["uid"] != old
    assert sorted(p for _, p in fake.pods) == ["echo-0", "echo-1"]


def test_an_object_stuck_terminating_is_named_after_the_wait(fake, api):
    api.wait_s = 0.2
    api.apply(NS, _service())
    fake.objects[("/api/v1/services", NS, "echo")]["metadata"]["deletionTimestamp"] = "then"
    with pytest.raises(ApiError, match=f"apply Service/echo in {NS}: the previous object of that "
                                       "name is still being deleted 0.2 s later"):
        api.apply(NS, _service())


def test_a_terminating_namespace_refuses_creates_and_a_second_delete(fake, api):
    fake.delete_polls = 5
    assert api.delete_namespace(NS) is True
    assert api.read_namespace(NS)["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError, match=f'403 Forbidden: services "echo" is forbidden: unable to '
                                       f"create new content in namespace {NS} because it is being "
                                       "terminated"):
        api.apply(NS, _service())
    with pytest.raises(LabError, match=f'409 Conflict: object is being deleted: namespaces '
                                       f'"{NS}" already exists'):
        api.create_namespace(NS, MANAGED)
    assert api.delete_namespace(NS) is True  # the server's 409 Conflict: already on its way
    assert [r.method for r in fake.requests if r.method == "DELETE"] == ["DELETE", "DELETE"]


def test_up_after_an_interrupted_down_waits_for_the_namespace(fake, tmp_path):
    for node in ("worknode5", "worknode6"):
        fake.add_node(node, OPT_IN)
    env = kube_env(fake, tmp_path)
    env.up()
    fake.delete_polls = 4
    env.api.delete_namespace(NS)  # a down that died before the namespace was gone
    env.up()
    assert fake.namespaces[NS]["status"]["phase"] == "Active"
    assert [p.name for p in env.pods()] == ["fortio-server-l2-0", "fortio-server-0", "netshoot-0"]


def test_set_based_selectors_pick_what_they_say(fake, api):
    for name, labels in (("a", {"tier": "front", "env": "dev"}), ("b", {"tier": "back"}),
                         ("c", {"env": "prod"})):
        api.apply(NS, _service(name, **labels))
    assert api.delete_labelled(NS, "v1", "Service", "tier in (front,back),env!=prod") == [
        "a", "b"]
    with pytest.raises(ApiError, match="HTTP 400 Bad Request: unable to parse requirement"):
        api.delete_labelled(NS, "v1", "Service", "tier in front")
    assert [r.query["labelSelector"][0] for r in fake.requests if r.method == "GET"
            and r.path.endswith("/services")] == ["tier in (front,back),env!=prod",
                                                  "tier in front"]


@pytest.mark.parametrize("selector,names", [
    ("", ["a", "b", "c"]), ("tier=front", ["a"]), ("tier==front", ["a"]),
    ("tier!=front", ["b", "c"]), ("tier in (front, back)", ["a", "b"]),
    ("tier notin (front)", ["b", "c"]), ("env", ["a", "c"]), ("!env", ["b"]),
    ("tier,!env", ["b"]), ("example.com/x", []),
])
def test_selector_semantics(selector, names):
    objects = {"a": {"tier": "front", "env": "dev"}, "b": {"tier": "back"}, "c": {"env": "prod"}}
    wanted = parse_selector(selector)
    assert [n for n, labels in objects.items() if selects(wanted, labels)] == names


@pytest.mark.parametrize("bad", ["tier in front", "=x", "a b", "tier in (Bad Value)"])
def test_malformed_selectors_do_not_parse(bad):
    with pytest.raises(SelectorError, match="unable to parse requirement"):
        parse_selector(bad)
