"""KubeEnv's transports through the real ``kubernetes`` client and the in-test API server:
pod exec over the WebSocket channel protocol (app vs ephemeral debug container), the sidecar
admin API over port-forward, access-log lines from ``istio-proxy`` logs, node shells and the
guarded node driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kube_fake_server import OPT_IN, FakeKube, kube_env

from meshlab.collectors.accesslog import count_records, parse_lines
from meshlab.collectors.sockets import SS_ARGV, count_by_state, snapshot
from meshlab.envs.kube.guardrails import GuardrailError
from meshlab.envs.kube.nodes import GuardedNodeDriver, NodeNames
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.ssh_config import SshConfig
from meshlab.errors import CommandError, ConfigError, LabError

NS = "meshlab-lab"
SS_OUT = ("ESTAB 0 0 10.244.9.4:41234 10.244.9.2:8080 users:((\"envoy\",pid=9,fd=40)) "
          "uid:1337 ino:1 sk:1\n\t cubic rto:204 rtt:0.1/0.05 unacked:2\n"
          "LISTEN 0 4096 0.0.0.0:15001 0.0.0.0:* uid:1337 ino:2 sk:2\n")
ACCESS = ('{"start_time":"2026-01-01T00:00:00.000Z","method":"GET","path":"/echo",'
          '"response_code":503,"response_flags":"UC","upstream_cluster":'
          '"outbound|8080||fortio-server-l2.meshlab-lab.svc.cluster.local","duration":3}')


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


@pytest.fixture
def env(fake, tmp_path):
    """The base lab, up; then worknode6 loses its opt-in label (worknode5 keeps it)."""
    fake.add_node("worknode5", OPT_IN)
    fake.add_node("worknode6", OPT_IN)
    key, known = tmp_path / "id_test", tmp_path / "known_hosts"
    key.write_text("not a key: no connection is ever made\n")
    known.write_text("")
    ssh = SshConfig(nodes={"worknode5": "192.0.2.5", "worknode6": "192.0.2.6"}, key_file=key,
                    known_hosts_file=known)
    lab = kube_env(fake, tmp_path, ssh=ssh)
    lab.up()
    del fake.nodes[1]["metadata"]["labels"]["meshlab.io/chaos"]
    return lab


def _execs(fake: FakeKube) -> list[tuple[str, list[str], list[str]]]:
    return [(r.path.split("/")[-2], r.query["container"], r.query["command"])
            for r in fake.requests if r.path.endswith("/exec")]


def test_network_tools_run_in_one_debug_container_per_pod(fake, env, tmp_path):
    fake.exec_handler = lambda pod, container, argv, stdin: (
        (0, SS_OUT, "") if argv == SS_ARGV else (0, f"{pod}/{container}\n", ""))
    shell = env.pod_shell("fortio-server")
    sockets = snapshot(shell)  # the collector, unchanged
    assert count_by_state(sockets) == {"ESTAB": 1, "LISTEN": 1}
    assert sockets[0].unacked == 2 and sockets[0].uid == 1337
    assert shell.run(["iptables", "-t", "nat", "-S"]).stdout == "fortio-server-0/meshlab-debug\n"
    assert env.pod_shell("netshoot").run(["curl", "-sS", "http://fortio-server:8080/"]).stdout \
        == "netshoot-0/netshoot\n"

    patches = [r for r in fake.mutating() if r.path.endswith("/ephemeralcontainers")]
    assert [(r.method, r.path) for r in patches] == [
        ("PATCH", f"/api/v1/namespaces/{NS}/pods/fortio-server-0/ephemeralcontainers")]
    assert patches[0].headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert patches[0].body == {"spec": {"ephemeralContainers": [{
        "name": "meshlab-debug", "image": "nicolaka/netshoot:v0.13",
        "imagePullPolicy": "IfNotPresent", "command": ["sleep", "infinity"], "stdin": False,
        "tty": False, "targetContainerName": "main-app",
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}}]}}
    assert _execs(fake) == [
        ("fortio-server-0", ["meshlab-debug"], SS_ARGV),
        ("fortio-server-0", ["meshlab-debug"], ["iptables", "-t", "nat", "-S"]),
        ("netshoot-0", ["netshoot"], ["curl", "-sS", "http://fortio-server:8080/"])]
    upgrade = next(r for r in fake.requests if r.path.endswith("/exec"))
    assert upgrade.query["stdout"] == upgrade.query["stderr"] == ["true"]
    assert upgrade.query["tty"] == ["false"]
    assert "v4.channel.k8s.io" in upgrade.headers["sec-websocket-protocol"]
    # a fresh env (the fault deadman's) finds the running debug container instead of adding one
    fresh = kube_env(fake, tmp_path, ssh=env.settings.ssh)
    fresh.pod_shell("fortio-server").run(["conntrack", "-L"])
    assert len([r for r in fake.mutating() if r.path.endswith("/ephemeralcontainers")]) == 1
    assert _execs(fake)[-1] == ("fortio-server-0", ["meshlab-debug"], ["conntrack", "-L"])


def test_exec_exit_codes_stderr_and_stdin(fake, env):
    fake.exec_handler = lambda pod, container, argv, stdin: (
        3, stdin.decode().upper(), "it failed\n")
    shell = env.pod_shell("fortio-server-0")
    res = shell.run(["tr", "a-z", "A-Z"], check=False, input_text="hello")
    assert (res.returncode, res.stdout, res.stderr) == (3, "HELLO", "it failed\n")
    assert res.argv == ["kubectl", "exec", "-n", NS, "fortio-server-0", "-c", "main-app", "--",
                        "tr", "a-z", "A-Z"]
    with pytest.raises(CommandError, match="exit 3.*it failed"):
        shell.run(["false"])
    with pytest.raises(LabError, match="user='1337:1337' is not supported through exec"):
        shell.popen(["sleep", "1"], user="1337:1337")


def test_sidecar_admin_goes_through_a_port_forward_to_15000(fake, env):
    fake.admin_handler = lambda pod, method, path: (
        (200, f"cluster.x.upstream_cx_total: 7\n{pod}\n") if path.startswith("/stats")
        else (404, "invalid path\n"))
    assert env.sidecar_admin("fortio-server", "/stats?filter=upstream_cx") == \
        "cluster.x.upstream_cx_total: 7\nfortio-server-0\n"
    forward = next(r for r in fake.requests if r.path.endswith("/portforward"))
    assert (forward.path, forward.query) == (
        f"/api/v1/namespaces/{NS}/pods/fortio-server-0/portforward", {"ports": ["15000"]})
    assert fake.admin_requests[0].startswith("GET /stats?filter=upstream_cx HTTP/1.1\r\n")
    with pytest.raises(LabError, match="sidecar admin POST /nope on fortio-server-0: HTTP 404"):
        env.sidecar_admin("fortio-server", "/nope", method="POST")
    with pytest.raises(ConfigError, match="netshoot-0 has no sidecar"):
        env.sidecar_admin("netshoot", "/stats")


def test_access_log_lines_are_the_json_lines_of_istio_proxy_logs(fake, env):
    fake.logs[(NS, "fortio-server-0", "istio-proxy")] = "\n".join([
        "2026-01-01T00:00:00.000000Z\tinfo\tEnvoy proxy is ready",
        '{"level":"info","time":"2026-01-01T00:00:00Z","msg":"xDS: Incremental Push"}',
        ACCESS, ACCESS.replace("503", "200").replace('"UC"', '"-"'), "{not json"])
    lines = env.access_log_lines("fortio-server")
    assert lines == [ACCESS, ACCESS.replace("503", "200").replace('"UC"', '"-"')]
    assert [(r.path, r.query) for r in fake.requests if r.path.endswith("/log")] == [
        (f"/api/v1/namespaces/{NS}/pods/fortio-server-0/log", {"container": ["istio-proxy"]})]
    counts = count_records(parse_lines(lines))  # the collector, unchanged
    assert sorted(c[-3:] for c in counts) == [["-", 200, 1], ["UC", 503, 1]]
    with pytest.raises(ConfigError, match="has no sidecar"):
        env.access_log_lines("netshoot")


def test_node_shell_needs_ssh_and_the_opt_in_label(fake, env, tmp_path):
    shell = env.node_shell("worknode5")
    assert shell.inner.node == "worknode5"  # SshShell; argv gets the nsenter prefix
    with pytest.raises(GuardrailError, match="kubectl label node worknode6 meshlab.io/chaos="):
        env.node_shell("worknode6")
    with pytest.raises(GuardrailError, match="node-poweroff touches node 'worknode6'"):
        env.node_driver().power_off("worknode6")
    no_ssh = kube_env(fake, tmp_path)
    with pytest.raises(ConfigError, match=r"ssh: not configured; node_shell\(worknode5\) needs "
                                          "SSH access"):
        no_ssh.node_shell("worknode5")
    with pytest.raises(ConfigError, match="ssh: not configured; node faults"):
        no_ssh.node_driver()


class _Recorder:
    """A NodeDriver that only records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def power_off(self, node: str) -> str:
        self.calls.append(("off", node))
        return node

    def power_on(self, node: str) -> str:
        self.calls.append(("on", node))
        return node

    def is_up(self, node: str) -> bool:
        return True


def test_node_faults_stay_within_max_nodes():
    settings = KubeSettings(max_nodes=1, max_pods=3, node_map={"worknode6": "ip-6"})
    inner = _Recorder()
    names = NodeNames(settings, ["worknode5", "worknode6"])
    labels = {n: dict(OPT_IN) for n in ("worknode5", "ip-6")}
    driver = GuardedNodeDriver(inner, settings, names, lambda: labels,
                               lambda node: [f"pod-on-{node}"], list)
    driver.power_off("worknode6")
    with pytest.raises(GuardrailError, match=r"bring the nodes under faults to 2 \(\['ip-6', "
                                             r"'worknode5'\]\), more than max_nodes=1"):
        driver.power_off("worknode5")
    driver.power_on("worknode6")
    driver.power_off("worknode5")
    assert inner.calls == [("off", "ip-6"), ("on", "ip-6"), ("off", "worknode5")]
    held_elsewhere = GuardedNodeDriver(_Recorder(), settings, names, lambda: labels,
                                       lambda node: [], lambda: ["worknode6"])
    with pytest.raises(GuardrailError, match="max_nodes=1"):
        held_elsewhere.power_off("worknode5")  # the ledger says another runner holds ip-6
