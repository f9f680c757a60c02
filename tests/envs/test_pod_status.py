"""CrashLoopBackOff as the kubelet times it (pure logic: :mod:`meshlab.envs.local.pod_status`),
and the LabCluster setting that scales it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshlab.envs.local.pod_status import (
    CRASH_LOOP,
    ContainerStatus,
    note_exit,
    note_restart,
    restart_due_at,
)
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS
from meshlab.errors import ManifestError
from meshlab.manifests.loader import load_topology


def _crash_loop(exits_at: list[float], scale: float = 1.0) -> list[float]:
    """The restart times of a container that exits at each of ``exits_at`` (seconds after
    its last restart when positive), as the kubelet would restart it."""
    st, restarts, now = ContainerStatus(), [], 0.0
    for ran_s in exits_at:
        note_exit(st, now + ran_s, 1, oom_killed=False)
        now = restart_due_at(st, scale)
        note_restart(st, now, scale)
        restarts.append(now - st.finished_at)
    return restarts


def test_the_first_exit_restarts_at_once_then_10_s_doubling_up_to_300_s():
    waits = _crash_loop([0.1] * 8)
    assert waits == pytest.approx([0, 10, 20, 40, 80, 160, 300, 300])


def test_a_container_that_ran_10_minutes_starts_over():
    # 3 quick crashes (waits 0, 10, 20), then it runs 601 s: the entry has expired
    assert _crash_loop([0.1, 0.1, 0.1, 601.0, 0.1]) == pytest.approx([0, 10, 20, 0, 10])


def test_the_lab_scale_multiplies_every_duration():
    assert _crash_loop([0.1] * 7, scale=0.1) == pytest.approx([0, 1, 2, 4, 8, 16, 30])
    assert _crash_loop([0.1, 0.1, 61.0], scale=0.1) == pytest.approx([0, 1, 0])


def test_exit_reasons_and_the_status_summary():
    st = ContainerStatus()
    note_exit(st, 5.0, None, oom_killed=True)
    assert (st.last_exit_reason, st.last_exit_code) == ("OOMKilled", 137)
    note_exit(st, 6.0, 0, oom_killed=False)
    assert st.last_exit_reason == "Completed"
    note_exit(st, 7.0, 2, oom_killed=False)
    st.state, st.reason = "waiting", CRASH_LOOP
    assert st.summary() == {"restarts": 0, "state": "waiting", "reason": CRASH_LOOP,
                            "last_exit": {"reason": "Error", "code": 2}}
    assert ContainerStatus.from_dict({**st.to_dict(), "unknown": 1}) == st


@pytest.mark.parametrize("value", [0, -1, 1.5, "fast", True])
def test_a_bad_backoff_scale_names_the_field(tmp_path: Path, value):
    for src in DEFAULT_MANIFESTS.glob("*.yaml"):
        (tmp_path / src.name).write_text(src.read_text())
    path = tmp_path / "lab-cluster.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["kubelet"] = {"crashLoopBackOffScale": value}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match="spec.kubelet.crashLoopBackOffScale"):
        load_topology(tmp_path)


def test_the_base_lab_scales_crash_loop_back_off_for_suites():
    assert load_topology(DEFAULT_MANIFESTS).cluster.backoff_scale == 0.1
