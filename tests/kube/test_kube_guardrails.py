"""Kube env settings and guardrails: refusals say what was refused and what to change."""

from __future__ import annotations

import pytest

from meshlab.envs.kube.guardrails import (
    GuardrailError,
    check_fault,
    check_lab_size,
    check_namespace,
    check_nodes,
)
from meshlab.envs.kube.settings import KubeSettings, load_settings, settings_from_dict
from meshlab.errors import ConfigError

OPTED_IN = {"meshlab.io/chaos": "allowed", "kubernetes.io/hostname": "n1"}
NODES = {"n1": OPTED_IN, "n2": {**OPTED_IN, "kubernetes.io/hostname": "n2"}, "prod": {}}


def test_settings_file_round_trip_and_overrides(tmp_path):
    path = tmp_path / "kube.yaml"
    path.write_text("namespace: chaos\nallowed_namespaces: [chaos]\nmax_nodes: 2\n"
                    "node_map: {worknode5: n1}\nprometheus_url: http://prom:9090\n"
                    "ssh: {nodes: {n1: 10.0.0.1}, key_file: /k}\n")
    settings = load_settings(path, dry_run=True)
    assert (settings.namespace, settings.max_nodes, settings.dry_run) == ("chaos", 2, True)
    assert settings.cluster_node("worknode5") == "n1" and settings.cluster_node("x") == "x"
    assert settings.ssh is not None and settings.ssh.host("n1") == "10.0.0.1"
    assert settings_from_dict(settings.to_dict()).to_dict() == settings.to_dict()


@pytest.mark.parametrize(("text", "field"), [
    ("max_nodes: 0\n", "max_nodes"), ("namespace: Bad_NS\n", "namespace"),
    ("node_label: nolabel\n", "node_label"), ("prometheus_url: prom:9090\n", "prometheus_url"),
    ("colour: red\n", "colour"), ("ssh: {nodes: {}, key_file: /k}\n", "ssh.nodes"),
    ("- a list\n", "mapping")])
def test_bad_settings_fail_fast_naming_file_and_field(tmp_path, text, field):
    path = tmp_path / "kube.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_missing_settings_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_namespace_must_be_allow_listed_and_never_a_system_namespace():
    check_namespace(KubeSettings())
    with pytest.raises(GuardrailError, match="not in allowed_namespaces.*add it"):
        check_namespace(KubeSettings(namespace="team-a"))
    with pytest.raises(GuardrailError, match="system namespace"):
        check_namespace(KubeSettings(namespace="kube-system",
                                     allowed_namespaces=["kube-system"]))


def test_nodes_must_exist_and_carry_the_opt_in_label():
    settings = KubeSettings()
    check_nodes(settings, NODES, ["n1", "n2"], "the lab's pods")
    with pytest.raises(GuardrailError) as err:
        check_nodes(settings, NODES, ["n1", "prod"], "node-poweroff")
    assert "kubectl label node prod meshlab.io/chaos=allowed" in str(err.value)
    with pytest.raises(GuardrailError, match="does not have.*node_map"):
        check_nodes(settings, NODES, ["worknode9"], "the lab's pods")


def test_blast_radius_counts_nodes_already_under_faults_and_pods():
    settings = KubeSettings(max_nodes=1, max_pods=2)
    check_fault(settings, "node-poweroff", ["n1"], ["a", "b"], NODES)
    with pytest.raises(GuardrailError, match="to 2 .*max_nodes=1.*raise max_nodes"):
        check_fault(settings, "node-poweroff", ["n2"], [], NODES, already_nodes=["n1"])
    with pytest.raises(GuardrailError, match="3 pods.*max_pods=2"):
        check_fault(settings, "packet-drop", [], ["a", "b", "c"])
    with pytest.raises(GuardrailError, match="kubectl label node prod"):
        check_fault(KubeSettings(max_nodes=2), "packet-drop", ["prod"], [], NODES)
    with pytest.raises(GuardrailError, match="runs 11 pods.*max_pods=10"):
        check_lab_size(KubeSettings(), 11)
