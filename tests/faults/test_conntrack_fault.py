"""``conntrack-delete`` and ``conntrack-timeouts`` on a real netns: entries deleted by selector, timeouts set and restored
exactly by a fresh instance (as the deadman builds it), and parameter validation."""

import dataclasses

import pytest

from meshlab.envs.local.netns import NetnsShell, add_netns, delete_netns
from meshlab.envs.local.netns_socket import netns_socket
from meshlab.errors import ConfigError
from meshlab.faults.conntrack_delete import ConntrackDelete
from meshlab.faults.conntrack_timeouts import SYSCTL_PREFIX, ConntrackTimeouts
from meshlab.faults.registry import create

NS = "ml-hctf-p"
PORT = 9555


class OneNetnsEnv:
    """An env whose only pod ``app`` and only node ``node`` are one real netns."""

    name = "test"

    def pod_shell(self, pod):
        if pod != "app":
            raise ConfigError(f"no pod {pod}")
        return NetnsShell(NS, "app")

    def node_shell(self, node):
        if node != "node":
            raise ConfigError(f"no node {node}")
        return NetnsShell(NS, "node")


@pytest.fixture
def netns(host_snapshot):
    delete_netns(NS)
    add_netns(NS)
    shell = NetnsShell(NS)
    shell.run(["iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW"])  # track
    try:
        yield shell
    finally:
        delete_netns(NS)


def tcp_flow():
    """An established loopback TCP connection to PORT inside the netns (three sockets)."""
    listener = netns_socket(NS)
    listener.bind(("127.0.0.1", PORT))
    listener.listen(1)
    client = netns_socket(NS)
    client.connect(("127.0.0.1", PORT))
    server, _ = listener.accept()
    return listener, client, server


def entries(shell, port):
    res = shell.run(["conntrack", "-L", "-p", "tcp", "--orig-port-dst", str(port)], check=False)
    return [line for line in res.stdout.splitlines() if "dport" in line]


@pytest.mark.lab
def test_delete_removes_only_the_selected_flow(netns):
    socks = tcp_flow()
    try:
        assert len(entries(netns, PORT)) == 1
        other = ConntrackDelete(target="app", orig_dst="127.0.0.1", orig_port=PORT + 1)
        assert "deleted 0" in other.inject(OneNetnsEnv()) and other.deleted == 0
        fault = ConntrackDelete(target="app", orig_dst="127.0.0.1", orig_port=PORT,
                                state="ESTABLISHED")
        assert "deleted 1" in fault.inject(OneNetnsEnv()) and fault.deleted == 1
        assert entries(netns, PORT) == []
        assert "nothing to revert" in fault.revert(OneNetnsEnv())
        socks[1].sendall(b"x")  # mid-stream pickup (nf_conntrack_tcp_loose): a new entry
        assert socks[2].recv(1) == b"x" and len(entries(netns, PORT)) == 1
    finally:
        for s in socks:
            s.close()


@pytest.mark.lab
@pytest.mark.parametrize("target", ["app", "node"])
def test_timeouts_are_restored_exactly_by_a_fresh_instance(netns, target):
    before = {k: netns.run(["sysctl", "-n", SYSCTL_PREFIX + k]).stdout.strip()
              for k in ("close_wait", "established")}
    fault = ConntrackTimeouts(target=target, timeouts={"close_wait": 5, "established": 30})
    out = fault.inject(OneNetnsEnv())
    assert "close_wait=5s (was 60)" in out
    fault.inject(OneNetnsEnv())  # idempotent: the saved values stay the original ones
    assert fault.saved == {SYSCTL_PREFIX + k: v for k, v in before.items()}
    assert netns.run(["sysctl", "-n", SYSCTL_PREFIX + "close_wait"]).stdout.strip() == "5"
    fresh = create("conntrack-timeouts", **dataclasses.asdict(fault))  # what the deadman does
    assert "restored" in fresh.revert(OneNetnsEnv())
    assert {k: netns.run(["sysctl", "-n", SYSCTL_PREFIX + k]).stdout.strip()
            for k in before} == before
    assert "nothing to revert" in fresh.revert(OneNetnsEnv())


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="target"):
        ConntrackDelete(target="nope").inject(OneNetnsEnv())


@pytest.mark.parametrize("fault, params, field", [
    ("conntrack-delete", {"protocol": "icmpv9"}, "protocol"),
    ("conntrack-delete", {"orig_dst": "10.0.0.300"}, "orig_dst"),
    ("conntrack-delete", {"orig_port": 70000}, "orig_port"),
    ("conntrack-delete", {"state": "ESTAB"}, "state"),
    ("conntrack-delete", {"protocol": "udp", "state": "ESTABLISHED"}, "state"),
    ("conntrack-delete", {"timeouts": {"close_wait": 5}}, "unexpected keyword"),
    ("conntrack-delete", {"target": ""}, "target"),
    ("conntrack-timeouts", {}, "timeouts"),
    ("conntrack-timeouts", {"timeouts": {"closewait": 5}}, "timeouts"),
    ("conntrack-timeouts", {"timeouts": {"close_wait": 0}}, "timeouts"),
    ("conntrack-timeouts", {"timeouts": {"close_wait": 5}, "orig_port": 80}, "unexpected keyword"),
    ("conntrack-timeouts", {"timeouts": {"close_wait": 5}, "target": ""}, "target"),
])
def test_bad_parameters_name_the_field(fault, params, field):
    pattern = f"fault '{fault}': .*{field}" if field == "unexpected keyword" else f"{fault}: {field}:"
    with pytest.raises(ConfigError, match=pattern):
        create(fault, **{"target": "app", **params})


def test_delete_argv_carries_the_selector():
    fault = ConntrackDelete(target="app", orig_dst="10.96.0.10", orig_port=9000,
                            state="CLOSE_WAIT")
    assert fault.delete_argv() == ["conntrack", "-D", "-p", "tcp", "--orig-dst", "10.96.0.10",
                                   "--orig-port-dst", "9000", "--state", "CLOSE_WAIT"]
