"""KubeEnv ``--dry-run`` (every manifest and command printed, nothing sent), ``spec()`` →
``env_from_spec``, ``describe()`` in the journal's shape, and ``prometheus()``."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
import yaml
from kube_fake_server import LAB, OPT_IN, FakeKube, kube_env

from meshlab.collectors.sockets import SS_ARGV, snapshot
from meshlab.envs.factory import env_from_spec
from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.envs.kube.env import KubeEnv
from meshlab.envs.kube.settings import KubeSettings
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS
from meshlab.envs.prometheus_api import PrometheusClient
from meshlab.envs.ssh_config import SshConfig
from meshlab.errors import ConfigError
from meshlab.faults.node_poweroff import NodePowerOff
from meshlab.report.journal import validate_journal

NS = "meshlab-lab"
HEREDOC = re.compile(r"^kubectl apply(?: -n (\S+))? -f - <<'EOF'\n(.*?)\nEOF$",
                     re.MULTILINE | re.DOTALL)


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


def _ssh(tmp_path) -> SshConfig:
    return SshConfig(nodes={"worknode5": "192.0.2.5", "worknode6": "192.0.2.6",
                            "worknode7": "192.0.2.7"}, key_file=tmp_path / "absent-key",
                     power_on_command=["virsh", "start", "{node}"])


def test_dry_run_prints_every_manifest_and_command_and_sends_nothing(fake, tmp_path, capsys):
    env = kube_env(fake, tmp_path, ("ha-l2", "ha-l2-timeouts"), dry_run=True, ssh=_ssh(tmp_path))
    assert isinstance(env.api, DryRunApi)  # settings.dry_run picks the printing facade
    env.up()
    assert [p.name for p in env.pods()] == ["fortio-server-l2-0", "fortio-server-l2-1",
                                            "fortio-server-0", "netshoot-0"]
    assert snapshot(env.pod_shell("fortio-server")) == []
    env.pod_shell("netshoot").run(["curl", "-sS", "http://fortio-server:8080/echo"])
    assert env.sidecar_admin("fortio-server", "/stats") == ""
    assert env.access_log_lines("fortio-server-l2-1") == []
    env.node_shell("worknode6").run(["conntrack", "-D", "-p", "tcp"])
    fault = NodePowerOff(node=env.pod("fortio-server-l2-0").node)
    fault.inject(env)
    fault.revert(env)
    env.down()
    out = capsys.readouterr().out

    assert fake.requests == []  # the kubeconfig points at the fake server: nothing reached it
    docs = [(ns, yaml.safe_load(text)) for ns, text in HEREDOC.findall(out)]
    assert docs[0] == ("", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": env.namespace_labels}})
    assert [d for _, d in docs[1:]] == env.objects  # every object, in apply order, in full
    assert {ns for ns, _ in docs[1:]} == {NS}
    assert [d["kind"] for _, d in docs] == ["Namespace", "Service", "Service", "DestinationRule",
                                           "VirtualService", "Telemetry", "StatefulSet",
                                           "StatefulSet", "StatefulSet"]
    commands = [line for line in HEREDOC.sub("", out).splitlines() if line.strip()]
    assert commands == [
        ("# node check skipped (dry run): nodes ['worknode5', 'worknode6', 'worknode7'] must "
         "carry meshlab.io/chaos=allowed (kubectl get nodes -l meshlab.io/chaos=allowed)"),
        f"# kubectl wait -n {NS} --for=condition=Ready pod --all --timeout=5s",
        (f"kubectl debug -n {NS} fortio-server-0 --image=nicolaka/netshoot:v0.13 "
         "--container=meshlab-debug --target=main-app --profile=netadmin -- sleep infinity"),
        f"kubectl exec -n {NS} fortio-server-0 -c meshlab-debug -- {' '.join(SS_ARGV)}",
        (f"kubectl exec -n {NS} netshoot-0 -c netshoot -- curl -sS "
         "http://fortio-server:8080/echo"),
        (f"kubectl port-forward -n {NS} pod/fortio-server-0 15000:15000 & "
         "curl -sS -X GET http://127.0.0.1:15000/stats"),
        f"kubectl logs -n {NS} fortio-server-l2-1 -c istio-proxy",
        "# node check skipped (dry run): worknode6 must carry meshlab.io/chaos=allowed",
        "ssh root@192.0.2.6 nsenter -t 1 -n conntrack -D -p tcp",
        "ssh root@192.0.2.6 sh -c 'echo o > /proc/sysrq-trigger'",
        "virsh start worknode6",
        f"kubectl delete namespace {NS} --wait=true --ignore-not-found",
    ]


def test_dry_run_still_refuses_what_the_guardrails_refuse(fake):
    out = io.StringIO()
    env = KubeEnv(DEFAULT_MANIFESTS, KubeSettings(dry_run=True, max_pods=2), lab=LAB, out=out)
    assert env.api.out is out
    with pytest.raises(ConfigError, match="max_pods=2"):
        env.up()
    with pytest.raises(ConfigError, match="ssh: not configured"):
        env.node_shell("worknode5")
    assert out.getvalue() == ""
    assert fake.requests == []


def test_spec_rebuilds_the_same_env(fake, tmp_path):
    env = kube_env(fake, tmp_path, ("tcp-echo",), namespace="mark", allowed_namespaces=["mark"],
                   node_map={"worknode5": "ip-5"}, ssh=_ssh(tmp_path))
    spec = json.loads(json.dumps(env.spec()))  # the ledger stores it as JSON
    assert spec["env"] == "kube" and spec["lab"] == LAB
    again = env_from_spec(spec)
    assert isinstance(again, KubeEnv)
    assert again.spec() == spec
    assert spec["cluster_manifests"].endswith("manifests/cluster")
    assert again.objects == env.objects
    assert again.settings.ssh.nodes == env.settings.ssh.nodes


def test_describe_has_the_journal_shape_with_node_kernels(fake, tmp_path):
    fake.add_node("worknode5", OPT_IN, kernel="6.1.0-18-amd64", ip="10.0.1.5")
    fake.add_node("worknode6", OPT_IN, kernel="6.8.0-1-amd64", ip="10.0.1.6")
    fake.add_node("unrelated", OPT_IN)
    env = kube_env(fake, tmp_path)
    env.up()
    facts = env.describe()
    validate_journal({"schema": "meshlab.run/1", "run_id": "r", "status": "passed", **facts})
    assert facts["env"]["kernel"] == "worknode5: 6.1.0-18-amd64; worknode6: 6.8.0-1-amd64"
    assert facts["env"]["sysctls"] is None  # not collected on a cluster
    assert [(n["name"], n["ip"]) for n in facts["topology"]["nodes"]] == [
        ("worknode5", "10.0.1.5"), ("worknode6", "10.0.1.6")]
    assert {s["name"]: s["cluster_ip"] for s in facts["topology"]["services"]} == {
        "fortio-server-l2": "10.96.0.10", "fortio-server": "10.96.0.11"}


def test_prometheus_needs_a_configured_url(fake, tmp_path):
    with pytest.raises(ConfigError, match="prometheus_url: not set"):
        kube_env(fake, tmp_path).prometheus()
    client = kube_env(fake, tmp_path, prometheus_url="http://prometheus.istio-system:9090/"
                      ).prometheus()
    assert isinstance(client, PrometheusClient)
    assert (client.url, client.runner) == ("http://prometheus.istio-system:9090", None)
    client.close()
