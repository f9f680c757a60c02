"""The network faults on the kube env, in a dry run against the in-test API server: the same
argv as on the local lab goes through each pod's debug container (``tc`` netem, ``iptables``,
``tc`` tbf + IFB), printed as ``kubectl`` commands; nothing is sent to the cluster.
``cpu-stress`` runs shell burners in the debug container."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from kube_fake_server import FakeKube, kube_env

from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.faults.bandwidth import Bandwidth
from meshlab.faults.cpu_stress import CpuStress
from meshlab.faults.network_delay import NetworkDelay
from meshlab.faults.network_partition import NetworkPartition

NS = "meshlab-lab"
L2 = "fortio-server-l2-0"
EXEC = f"kubectl exec -n {NS} {L2} -c meshlab-debug -- "


@pytest.fixture
def env(tmp_path) -> Iterator:
    with FakeKube() as fake:
        lab = kube_env(fake, tmp_path, api=DryRunApi(io.StringIO()), dry_run=True)
        lab.up()
        yield lab
        assert fake.mutating() == []  # a dry run sends nothing


def _printed(fault, env) -> str:
    """What inject and revert print."""
    out = env.api.out
    start = len(out.getvalue())
    fault.inject(env)
    fault.revert(env)
    return out.getvalue()[start:]


def test_network_delay_prints_netem_in_the_debug_container(env):
    fault = NetworkDelay(target=L2, delay_ms=50, jitter_ms=5, loss_pct=1, direction="both")
    out = _printed(fault, env)
    assert fault.backend_used == "netem"  # clusters have sch_netem; no agent there
    assert (f"{EXEC}tc qdisc add dev eth0 root handle 1: netem delay 50ms 5ms 0% "
            "distribution normal loss 1%") in out
    assert f"{EXEC}ip link add {fault.ifb} type ifb" in out
    assert f"{EXEC}tc qdisc add dev {fault.ifb} root handle 1: netem delay 50ms" in out


def test_network_partition_prints_both_sides_chains(env):
    fault = NetworkPartition(side_a=["netshoot-0"], side_b=[L2], mode="reject")
    out = _printed(fault, env)
    chain = fault.chain.chain
    for pod in ("netshoot-0", L2):
        exec_ = f"kubectl exec -n {NS} {pod} -c meshlab-debug -- "
        assert f"{exec_}iptables -N {chain}" in out
        assert f"{exec_}iptables -I INPUT 1 '!' -i lo -m comment" in out
        assert f"{exec_}iptables -X {chain}" in out
    assert "--reject-with tcp-reset" in out


def test_bandwidth_prints_tbf_and_the_ifb(env):
    fault = Bandwidth(target=L2, rate_mbit=1, direction="both")
    out = _printed(fault, env)
    assert f"{EXEC}tc qdisc add dev eth0 root handle {fault.handle} tbf rate 1mbit" in out
    assert f"{EXEC}tc filter add dev eth0 parent ffff: protocol all u32" in out
    assert f"{EXEC}ip link del {fault.ifb}" in out


def test_cpu_stress_prints_shell_burners_in_the_debug_container(env):
    out = _printed(CpuStress(target=L2, workers=2, load_pct=50, stress_id="ab12"), env)
    assert out.count(f"{EXEC}sh -c 'nohup \"$@\"") == 2
    assert "meshlab.faults.cpu_burner --load-pct 50 --id ab12" in out
    assert f"{EXEC}pkill -TERM -f" in out
