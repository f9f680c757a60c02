"""The chaostoolkit extension on the kube env, against the in-test API server: the same
control and actions as on the local lab, through the same run lifecycle, guardrails and dry
run as a suite (``meshlab run --env kube``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "kube"))
from kube_fake_server import OPT_IN, FakeKube

from meshlab.chaostoolkit import actions, control, session
from meshlab.envs.kube.guardrails import GuardrailError
from meshlab.envs.ledger import entries

LAB = "ctkube"
NS = "meshlab-lab"
L2 = "fortio-server-l2-0"


class IptablesRules:
    """The fake's exec answers for ``iptables`` as the real one gives them: ``-C`` exits 1 for
    a rule that is not there, ``-I``/``-A`` add one, ``-D`` removes one or exits 1."""

    def __init__(self) -> None:
        self.rules: dict[str, list[tuple[str, ...]]] = {}

    def __call__(self, pod: str, container: str, argv: list[str], stdin: bytes
                 ) -> tuple[int, str, str]:
        if argv[:1] != ["iptables"]:
            return 0, "", ""
        op, rule = argv[1], tuple(argv[2:])
        rules = self.rules.setdefault(pod, [])
        if op in ("-I", "-A"):
            rules.append(rule)
        elif op in ("-C", "-D") and rule not in rules:
            return 1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n"
        elif op == "-D":
            rules.remove(rule)
        return 0, "", ""


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


def _config(fake: FakeKube, tmp_path: Path, **extra: object) -> dict[str, object]:
    settings = tmp_path / "kube.yaml"
    settings.write_text(yaml.safe_dump({"kubeconfig": fake.kubeconfig(tmp_path),
                                        "ready_timeout_s": 5.0}))
    return {"meshlab_env": "kube", "meshlab_lab": LAB, "meshlab_kube_config": str(settings),
            "meshlab_reports": str(tmp_path / "reports"), **extra}


def _experiment(config: dict[str, object]) -> dict[str, object]:
    """What ``chaos run`` does with the shipped control: begin, inject, revert, end."""
    control.configure_control({"title": "kube reject"}, config)
    try:
        injected = actions.inject_fault("reject-connections", {"target": L2, "port": 8080},
                                        max_duration_s=60, configuration=config)
        reverted = actions.revert_fault("reject-connections", configuration=config)
        control.after_experiment_control(None, state={"status": "completed",
                                                      "deviated": False})
    finally:
        control.cleanup_control()
    return {"injected": injected, "reverted": reverted}


def _journal(tmp_path: Path) -> dict[str, object]:
    (path,) = (tmp_path / "reports").glob("*/results.json")
    return json.loads(path.read_text())


def _execs(fake: FakeKube) -> list[tuple[str, list[str], list[str]]]:
    return [(r.path.split("/")[-2], r.query["container"], r.query["command"])
            for r in fake.requests if r.path.endswith("/exec")]


def test_an_experiment_runs_on_the_kube_env(fake, tmp_path):
    for node in ("worknode5", "worknode6"):
        fake.add_node(node, OPT_IN)
    fake.exec_handler = iptables = IptablesRules()
    out = _experiment(_config(fake, tmp_path))
    assert out["injected"]["ledger_id"] and out["reverted"]["reverted_by"] == "runner"
    assert fake.namespaces[NS]  # the session applied the lab into the settings' namespace
    ops = [argv[1] for pod, container, argv in _execs(fake)
           if pod == L2 and container == ["meshlab-debug"] and argv[0] == "iptables"]
    assert ops[-2:] == ["-D", "-D"] and ("-I" in ops or "-A" in ops)  # added, removed
    assert iptables.rules[L2] == []  # the revert left no rule behind
    assert entries("kube", LAB) == []
    journal = _journal(tmp_path)
    assert (journal["status"], journal["env"]["name"], journal["env"]["namespace"]) == (
        "passed", "kube", NS)
    assert [a["name"] for a in journal["activities"]] == ["inject:reject-connections",
                                                          "revert:reject-connections"]


def test_a_dry_run_prints_the_lab_and_the_fault_and_sends_nothing(fake, tmp_path, capsys):
    for node in ("worknode5", "worknode6"):
        fake.add_node(node, OPT_IN)
    _experiment(_config(fake, tmp_path, meshlab_dry_run=True))
    printed = capsys.readouterr().out
    assert "kubectl apply -n meshlab-lab -f - <<'EOF'" in printed
    assert f"kubectl debug -n {NS} {L2} " in printed  # the fault's debug container
    rules = f"kubectl exec -n {NS} {L2} -c meshlab-debug -- iptables "
    assert f"{rules}-D INPUT -p tcp -m conntrack --ctorigdstport 8080" in printed  # its revert
    assert fake.mutating() == []
    journal = _journal(tmp_path)
    assert journal["status"] == "skipped"
    assert any("dry run" in note for note in journal["notes"])


def test_the_guardrails_refuse_before_anything_is_sent(fake, tmp_path):
    fake.add_node("worknode5", {})  # not opted in
    fake.add_node("worknode6", {})
    config = _config(fake, tmp_path)
    control.configure_control({"title": "refused"}, config)  # logged, as chaostoolkit would
    try:
        with pytest.raises(GuardrailError, match="meshlab.io/chaos=allowed"):
            actions.inject_fault("reject-connections", {"target": L2, "port": 8080},
                                 configuration=config)
    finally:
        control.cleanup_control()
    assert fake.mutating() == [] and session.peek() is None
