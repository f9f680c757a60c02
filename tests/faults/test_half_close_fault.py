"""``half-close`` on a real lab (base + ``tcp-echo`` overlay), and the two TCP overlays' config.

The fault is checked by what it changes: L1's conntrack CLOSE_WAIT timeout (saved, scaled,
restored exactly, also by a fresh instance built from its ledger fields) and a FIN from tcp-echo
on a live session through L1's sidecar. The scenario itself (the leak) is
``suites/test_half_close.py``.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from meshlab.envs.ledger import fault_params
from meshlab.envs.local import istiod
from meshlab.envs.local.netns import netns_pids
from meshlab.envs.local.plan import make_plan
from meshlab.envs.manifest_sets import manifest_set
from meshlab.errors import ConfigError, LabError
from meshlab.faults.base import active
from meshlab.faults.half_close import CLOSE_WAIT_SYSCTL, HalfClose, signal_app
from meshlab.faults.registry import create
from meshlab.manifests.loader import load_topology

LAB = "hhc"
L1 = "fortio-server-0"
CLUSTER = "outbound|9000||tcp-echo.mark.svc.cluster.local"


def test_parameters_are_validated_and_registered():
    fault = create("half-close", target=L1, upstream="tcp-echo")
    assert isinstance(fault, HalfClose) and fault.close_wait_timeout_s == 5
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ConfigError, match="close_wait_timeout_s"):
            HalfClose(target=L1, upstream="tcp-echo", close_wait_timeout_s=bad)
    with pytest.raises(ConfigError, match="app_match"):
        HalfClose(target=L1, upstream="tcp-echo", app_match=" ")


def test_overlays_make_tcp_echo_opaque_tcp_with_an_idle_timeout():
    """``tcp-echo``: port name → TCP proxy; ``tcp-idle-timeout``: the DestinationRule's
    ``connectionPool.tcp.idleTimeout`` becomes the TCP proxy idle_timeout of L1's cluster."""
    plan = make_plan(load_topology(manifest_set(overlays=["tcp-echo"])), "t")
    svc = next(s for s in plan.topology.services if s.name == "tcp-echo")
    assert [(p.port, p.protocol) for p in svc.ports] == [(9000, "tcp")]
    assert plan.pods["tcp-echo-0"].node.name == "worknode6" and plan.pods["tcp-echo-0"].pod.meshed
    assert "tcp\\..*" in istiod.stats_inclusion_regexps(plan.pods[L1])
    assert CLUSTER not in istiod.policies(plan, plan.pods[L1])["clusters"]
    mitigated = make_plan(load_topology(manifest_set(overlays=["tcp-echo", "tcp-idle-timeout"])),
                          "t")
    cluster = istiod.policies(mitigated, mitigated.pods[L1])["clusters"][CLUSTER]
    assert cluster["tcp_idle_timeout_s"] == 6.0


@pytest.mark.lab
def test_inject_scales_sysctl_sends_fin_and_revert_restores(tmp_path, running_lab):
    with running_lab(LAB, manifests=manifest_set(overlays=["tcp-echo"])) as env:
        _inject_revert(env, tmp_path)


def _inject_revert(env, tmp_path):
    l1 = env.pod_shell(L1)

    def close_wait() -> str:
        return l1.run(["sysctl", "-n", CLOSE_WAIT_SYSCTL]).stdout.strip()

    before = close_wait()
    result = tmp_path / "r.json"
    app = l1.popen([sys.executable, "-m", "meshlab.apps.tcp_client", "--connect",
                    "tcp-echo:9000", "--send", "x", "--hold-s", "20", "--result", str(result)],
                   stdout=tmp_path / "events")
    try:
        deadline = time.monotonic() + 10
        while '"received"' not in (tmp_path / "events").read_text():
            assert time.monotonic() < deadline and app.poll() is None, "no echo"
            time.sleep(0.05)  # poll interval
        fault = HalfClose(target=L1, upstream="tcp-echo", close_wait_timeout_s=3)
        with active(fault, env):
            assert close_wait() == "3"
            assert fault.saved == {CLOSE_WAIT_SYSCTL: before} and len(fault.signalled) == 1
            fault.inject(env)  # again: the saved value stays the original one
            assert fault.saved == {CLOSE_WAIT_SYSCTL: before}
            app.wait(timeout=10)  # the upstream's FIN ends the client's read
            assert json.loads(result.read_text())["eof_after_s"] is not None
            # a fresh instance from the ledger fields reverts it too (deadman path)
            fresh = create("half-close", **fault_params(fault))
            assert fresh.revert(env).endswith(f"{CLOSE_WAIT_SYSCTL}={before}")
            assert close_wait() == before
        assert close_wait() == before
        assert fault.revert(env).endswith(f"={before}")  # idempotent
        assert HalfClose(target=L1, upstream="tcp-echo").revert(env).endswith("restore")
        missing = HalfClose(target=L1, upstream="tcp-echo", app_match="no-such-app")
        with pytest.raises(LabError, match="no process matching"), active(missing, env):
            pass  # inject fails after the sysctl write: active() reverts it
        assert close_wait() == before
        assert signal_app(env.pod_shell("tcp-echo"), "no-such-app") == []
        # app + sidecar alive (the sidecar's main; its workers are in the netns too)
        alive = set(netns_pids(env.plan.pods["tcp-echo-0"].netns))
        containers = {k: pid for k, pid in env.state.pids.items() if k.startswith("tcp-echo-0/")}
        assert len(containers) == 2 and set(containers.values()) <= alive, (containers, alive)
    finally:
        if app.poll() is None:
            app.kill()
        app.wait(timeout=10)
        HalfClose(target=L1, upstream="tcp-echo", saved={CLOSE_WAIT_SYSCTL: before}).revert(env)
    assert close_wait() == before
