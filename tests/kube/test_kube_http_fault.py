"""``http-fault`` on the kube env: the lab's VirtualService for the host gets the ``fault``
(its timeout and retries kept) and is applied again unchanged on revert; without one, a
labelled VirtualService is created and deleted by its label. Inject and revert return once the
sidecars' ``/config_dump`` shows the change. Against the in-test API server (whose admin
handler plays istiod: a sidecar's routes have the faults of the VirtualServices stored now) and
in a dry run."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from kube_fake_server import OPT_IN, FakeKube, kube_env

from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.errors import ConfigError
from meshlab.faults.http_fault import HttpFault

NS = "meshlab-lab"
L2 = "fortio-server-l2"
FQDN = f"{L2}.{NS}.svc.cluster.local"
VS = "/apis/networking.istio.io/v1/virtualservices"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        for node in ("worknode5", "worknode6", "worknode7"):
            server.add_node(node, OPT_IN)
        server.admin_handler = lambda pod, method, path: (200, _config_dump(server))
        yield server


def _config_dump(fake: FakeKube) -> str:
    """What istiod would have pushed: L2's route with the fault of any stored VirtualService."""
    faults = [e["fault"] for (c, _, _), o in fake.objects.items() if c == VS
              for e in o["spec"].get("http") or [] if "fault" in e]
    route = {"typed_per_filter_config": {"envoy.filters.http.fault": faults[0]}} if faults else {}
    return json.dumps({"configs": [{"dynamic_route_configs": [{"route_config": {
        "virtual_hosts": [{"name": f"{FQDN}:8080", "routes": [route]}]}}]}]})


def _stored(fake: FakeKube) -> dict[str, dict]:
    return {name: o for (c, _, name), o in fake.objects.items() if c == VS}


def test_a_host_without_a_virtualservice_gets_a_labelled_one_for_the_fault(fake, tmp_path):
    env = kube_env(fake, tmp_path)
    env.up()
    fault = HttpFault(host=L2, abort_http_status=503, abort_pct=50, delay_ms=100)
    assert "created" in fault.inject(env)
    vs = _stored(fake)[f"meshlab-http-fault-{L2}"]
    assert vs["metadata"]["labels"]["meshlab.io/http-fault"] == L2
    assert vs["spec"]["http"][0]["fault"] == {
        "abort": {"httpStatus": 503, "percentage": {"value": 50}},
        "delay": {"fixedDelay": "100ms", "percentage": {"value": 100.0}}}
    assert "deleted" in fault.revert(env)
    assert _stored(fake) == {}


def test_the_labs_own_virtualservice_keeps_its_retries_under_the_fault(fake, tmp_path):
    env = kube_env(fake, tmp_path, overlays=("ha-l2", "ha-l2-timeouts"))
    env.up()
    before = json.loads(json.dumps(_stored(fake)[L2]))
    fault = HttpFault(host=L2, abort_http_status=503, abort_pct=100, port=8080)
    fault.inject(env)
    http = _stored(fake)[L2]["spec"]["http"][0]
    assert http["fault"]["abort"]["httpStatus"] == 503
    assert http["retries"] == before["spec"]["http"][0]["retries"]
    fault.revert(env)
    after = _stored(fake)[L2]
    assert "fault" not in after["spec"]["http"][0] and set(_stored(fake)) == {L2}


def test_an_unknown_host_is_refused_before_anything_is_sent(fake, tmp_path):
    env = kube_env(fake, tmp_path)
    env.up()
    before = len(fake.mutating())
    with pytest.raises(ConfigError, match="http-fault: host: no Service named 'nope'"):
        HttpFault(host="nope", abort_http_status=503).inject(env)
    assert len(fake.mutating()) == before


def test_a_dry_run_prints_the_virtualservice_and_its_removal(fake, tmp_path):
    api = DryRunApi(io.StringIO())
    env = kube_env(fake, tmp_path, api=api, dry_run=True)
    env.up()
    fault = HttpFault(host=L2, delay_ms=100)
    fault.inject(env)
    fault.revert(env)
    out = api.out.getvalue()
    assert f"name: meshlab-http-fault-{L2}" in out and "fixedDelay: 100ms" in out
    assert "meshlab.io/http-fault=fortio-server-l2" in out
    assert fake.mutating() == []
