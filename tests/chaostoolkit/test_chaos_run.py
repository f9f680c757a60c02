"""``chaos run`` against a real local lab: the extension's actions, probes, rollbacks and control.

The experiment is ``experiments/reject-l2.json`` beside this file (reject-connections on L2's
8080 while load runs through L1 to L2): its steady state (L1's own echo endpoint) holds before
and after, the fault is reverted by the rollbacks, and nothing is left in the lab — the ledger
is empty, L2's netns has no ``meshlab:`` rule and the lab's fingerprint is unchanged. A failing
method still runs the rollbacks; a SIGTERM mid-method (Chaos Toolkit then skips rollbacks) is
caught by the control's safety net. The shipped experiments are validated with chaoslib and
their faults built from their parameters.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshlab.chaostoolkit import EXPERIMENTS_DIR, session
from meshlab.envs.ledger import entries
from meshlab.envs.local.fingerprint import diff
from meshlab.envs.local.lab import DEFAULT_MANIFESTS, LocalEnv
from meshlab.errors import ConfigError, LabError
from meshlab.experiment.labs import lab_down, lab_up

pytestmark = pytest.mark.lab
LAB = "hctk"
L2 = "fortio-server-l2-0"
CHAOS = str(Path(sys.executable).parent / "chaos")
REJECT_L2 = Path(__file__).parent / "experiments" / "reject-l2.json"
SHIPPED = sorted(EXPERIMENTS_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def lab():
    env = LocalEnv(DEFAULT_MANIFESTS, lab=LAB)
    lab_up(env)
    try:
        yield env
    finally:
        lab_down(env)


@pytest.fixture
def clean_lab(lab):
    """The lab, checked after the test: no ledger entry, no new rule/sysctl/process/netns."""
    before = lab.fingerprint()
    yield lab
    assert entries("local", LAB) == []
    assert diff(before, lab.fingerprint()) == []


def chaos(tmp_path: Path, experiment: Path, *extra: str) -> list[str]:
    return [CHAOS, "--no-version-check", "run", "--journal-path", str(tmp_path / "journal.json"),
            "--var", f"meshlab_lab={LAB}", "--var", f"meshlab_reports={tmp_path / 'reports'}",
            *extra, str(experiment)]


def run_chaos(tmp_path: Path, experiment: Path) -> dict:
    proc = subprocess.run(chaos(tmp_path, experiment), cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, check=False)
    assert (tmp_path / "journal.json").exists(), proc.stdout + proc.stderr
    return json.loads((tmp_path / "journal.json").read_text())


def meshlab_rules(env) -> list[str]:
    rules = env.pod_shell(L2).run(["iptables-save"]).stdout.splitlines()
    return [r for r in rules if "meshlab:" in r]


def meshlab_run(tmp_path: Path) -> dict:
    [results] = (tmp_path / "reports").glob("*/results.json")
    assert (results.parent / "report.html").exists()
    return json.loads(results.read_text())


def outputs(runs: list[dict]) -> dict:
    return {r["activity"]["name"]: r["output"] for r in runs}


def variant(tmp_path: Path, **changes) -> Path:
    """A copy of reject-l2.json with some top-level sections replaced (None: removed)."""
    exp = copy.deepcopy(json.loads(REJECT_L2.read_text()))
    for key, value in changes.items():
        if value is None:
            exp.pop(key.replace("_", "-"), None)
        else:
            exp[key.replace("_", "-")] = value
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(exp))
    return path


def test_chaos_run_reverts_the_fault_in_the_rollback(clean_lab, tmp_path):
    """Steady state met before and after, every activity succeeded, L1's sidecar logged UF
    for L2 while the fault was on, and the rollback reverted it (one rule removed)."""
    journal = run_chaos(tmp_path, REJECT_L2)
    assert journal["status"] == "completed" and journal["deviated"] is False
    for phase in ("before", "after"):
        state = journal["steady_states"][phase]
        assert state["steady_state_met"] is True
        assert all(p["tolerance_met"] for p in state["probes"])
    assert [r["status"] for r in journal["run"]] == ["succeeded"] * 5
    out = outputs(journal["run"])
    assert out["l2-refuses-connections"]["ledger_id"]
    assert out["l1-outbound-uf-count"] > 0
    assert out["l1-inbound-segments-sent"] > 0 and out["l1-sidecar-established"] >= 1
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"] * 2
    reverted, load = (r["output"] for r in journal["rollbacks"])
    assert reverted["reverted"] is True and reverted["reverted_by"] == "runner"
    assert reverted["output"].endswith("removed 1 rule(s)")
    assert load["stopped"] is True and load["requests"] > 0
    assert load["status_counts"].get("503", 0) > 0  # L1's sidecar answered for refused L2
    assert meshlab_rules(clean_lab) == []
    run = meshlab_run(tmp_path)
    assert run["status"] == "passed" and run["name"] == journal["experiment"]["title"]
    assert [w["name"] for w in run["fault_windows"]] == ["reject-connections"]
    assert {ld["name"] for ld in run["loads"]} == {"steady", "steady-2", "chaos"}


def test_failing_method_still_runs_the_rollback(clean_lab, tmp_path):
    """An activity after the inject fails: Chaos Toolkit records it as failed, carries on and
    runs the rollbacks, which revert the fault; the revert of a load never started is a
    no-op that succeeds."""
    base = json.loads(REJECT_L2.read_text())
    inject = base["method"][1]
    broken = copy.deepcopy(inject)
    broken["name"] = "inject-an-unknown-fault"
    broken["provider"]["arguments"] = {"name": "no-such-fault", "params": {}}
    journal = run_chaos(tmp_path, variant(tmp_path, steady_state_hypothesis=None,
                                          method=[inject, broken]))
    assert [r["status"] for r in journal["run"]] == ["succeeded", "failed"]
    assert "unknown fault 'no-such-fault'" in journal["run"][1]["exception"][-1]
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"] * 2
    reverted, load = (r["output"] for r in journal["rollbacks"])
    assert reverted["reverted"] is True and reverted["output"].endswith("removed 1 rule(s)")
    assert load == {"load": "chaos", "stopped": False, "output": "not started: nothing to stop"}
    assert meshlab_rules(clean_lab) == []


def test_sigterm_mid_method_is_caught_by_the_control(clean_lab, tmp_path):
    """SIGTERM while the fault is on: Chaos Toolkit marks the run interrupted and (default
    strategy) skips the rollbacks; the meshlab control's cleanup reverts the fault anyway."""
    inject = json.loads(REJECT_L2.read_text())["method"][1]
    inject["pauses"] = {"after": 60}
    path = variant(tmp_path, steady_state_hypothesis=None, method=[inject])
    proc = subprocess.Popen(chaos(tmp_path, path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not meshlab_rules(clean_lab):  # the fault is on: the method is in its pause
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    journal = json.loads((tmp_path / "journal.json").read_text())
    assert journal["status"] == "interrupted" and journal["rollbacks"] == []
    assert meshlab_rules(clean_lab) == []
    run = meshlab_run(tmp_path)
    assert run["status"] == "error"
    assert [a["name"] for a in run["activities"]][-1] == "revert:reject-connections"


def test_wrong_lab_is_refused_before_anything_is_injected(lab):
    """The experiment asks for an overlay the running lab was not built with."""
    with pytest.raises(LabError, match="--overlay ha-l2"):
        session.Session(session.env_spec({"meshlab_lab": LAB, "meshlab_overlays": ["ha-l2"]}),
                        Path("/nonexistent"), "x")
    with pytest.raises(LabError, match="is not up: run 'meshlab up --lab nolab' first"):
        session.Session(session.env_spec({"meshlab_lab": "nolab"}), Path("/nonexistent"), "x")
    with pytest.raises(ConfigError, match="meshlab_env: must be one of local, kube"):
        session.env_spec({"meshlab_env": "docker"})
    with pytest.raises(ConfigError, match="meshlab_dry_run/meshlab_kube_config: only with"):
        session.env_spec({"meshlab_dry_run": True})
    with pytest.raises(ConfigError, match="meshlab_interval"):
        session.env_spec({"meshlab_interval": "fast"})
    with pytest.raises(ConfigError, match="overlay 'nope'"):
        session.env_spec({"meshlab_overlays": "tcp-echo,nope"})


@pytest.mark.parametrize("path", [*SHIPPED, REJECT_L2], ids=lambda p: p.name)
def test_experiment_is_valid_and_its_faults_build(path):
    """chaoslib validates the experiment (activities bind to the functions' signatures); every
    injected fault is a registered fault whose parameters build it; every injected fault is
    reverted by a rollback; the configured overlays exist; the meshlab control is declared."""
    from chaoslib import substitute
    from chaoslib.experiment import ensure_experiment_is_valid
    from chaoslib.loader import load_experiment

    from meshlab.faults.registry import create

    exp = load_experiment(str(path))
    ensure_experiment_is_valid(exp)
    config = exp["configuration"]
    session.env_spec(config)  # overlays exist
    assert {c["provider"]["module"] for c in exp["controls"]} == {"meshlab.chaostoolkit.control"}
    injected = [substitute(a["provider"]["arguments"], config, {}) for a in exp["method"]
                if a["provider"].get("func") == "inject_fault"]
    assert injected
    for args in injected:
        create(args["name"], **args["params"])
    reverted = {a["provider"]["arguments"]["name"] for a in exp["rollbacks"]
                if a["provider"]["func"] == "revert_fault"}
    assert reverted == {a.get("key") or a["name"] for a in injected}
    if path in SHIPPED:
        assert path.stem == injected[0]["name"] and config["meshlab_lab"] == "lab"
