"""The keep-alive race overlays compose over the book's lab into the intended sidecar config
(suites/test_keepalive_race.py): L2 un-meshed and racing, L1's outbound cluster to L2 with the
DestinationRule's pool idle timeout or the VirtualService's retry on reset. No lab is built."""

from __future__ import annotations

from meshlab.apps import fortio
from meshlab.envs.local import istiod
from meshlab.envs.local.plan import make_plan
from meshlab.envs.manifest_sets import manifest_set
from meshlab.manifests.loader import load_topology

L2_CLUSTER = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"


def _l1_policies(*overlays: str) -> dict:
    plan = make_plan(load_topology(manifest_set(None, ("keepalive-race", *overlays))), "hka")
    return istiod.policies(plan, plan.pods["fortio-server-0"])


def test_racing_l2_is_out_of_the_mesh_with_a_500ms_race() -> None:
    topo = load_topology(manifest_set(None, ("keepalive-race",)))
    l2 = next(w for w in topo.workloads if w.name == "fortio-server-l2")
    assert not topo.is_meshed(l2)
    command, values = fortio.parse_args(list(l2.containers[0].args))
    assert fortio.build_config(command, values).idle_race_s == 0.5
    assert _l1_policies() == {"clusters": {}, "routes": {}}  # no mitigation by default


def test_pool_idle_timeout_overlay_sets_l1_outbound_idle_timeout() -> None:
    clusters = _l1_policies("pool-idle-timeout")["clusters"]
    assert clusters[L2_CLUSTER] == {"http_idle_timeout_s": 0.1}


def test_retry_overlay_sets_retry_on_reset_for_port_8080_only() -> None:
    routes = _l1_policies("retry-on-reset")["routes"]
    assert routes == {L2_CLUSTER: {"retry": {"num_retries": 2, "retry_on": "reset",
                                             "per_try_timeout_s": None}}}
