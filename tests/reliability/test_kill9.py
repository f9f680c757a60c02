"""Kill -9 at random points, 5 trials per CI run (``benchmarks/kill9.py`` runs 20 by hand).

Each trial SIGKILLs a real ``meshlab run`` of ``kill9_scenario.py`` in a phase drawn at random
(five of the six, see :mod:`kill9_harness`), at a random delay inside it; ``meshlab down`` must
then leave nothing behind. Each trial's own run begins with the next ``up`` over what the
previous kill left (before ``down`` cleaned it: the lab pool cleans leftovers first); after the
last trial the baseline suite's steady-state test must pass on a fresh ``up``. To fit CI's
time, the killed runs leave the lab's Prometheus off (the 20 trials by hand keep it on) and the
baseline is its steady-state test alone. The seed is printed, so a failure can
be replayed with ``benchmarks/kill9.py --seed``.
"""

from __future__ import annotations

import random
import time

import pytest
from kill9_harness import PHASES, baseline_passes, trial

LAB = "k9ci"
TRIALS = 5
STEADY_STATE = "suites/test_baseline.py::test_steady_state_through_both_sidecars"


@pytest.fixture(scope="module")
def seed() -> int:
    """A new seed per CI run (printed; pytest shows it on failure)."""
    value = int(time.time())
    print(f"kill -9 trials: seed {value}")
    return value


def test_five_random_kills_leave_nothing_behind_and_the_baseline_passes_after(
        seed: int) -> None:
    """5 trials, each clean after ``meshlab down``; then the baseline suite passes."""
    rng = random.Random(seed)
    phases = rng.sample(list(PHASES), TRIALS)
    dirty = []
    for phase in phases:
        rec = trial(phase, LAB, rng, run_args=("--meshlab-prometheus=off",))
        assert rec["down_rc"] == 0, f"seed {seed}: meshlab down failed: {rec['down_output']}"
        if rec["leftovers"]:
            dirty.append(f"{phase} +{rec['delay_s']} s (landed {rec['landed']}): "
                         f"{rec['leftovers']}")
    assert not dirty, f"seed {seed}: left behind after meshlab down:\n" + "\n".join(dirty)
    passed, tail = baseline_passes(LAB, STEADY_STATE)
    assert passed, f"seed {seed}: the baseline suite failed after the kills:\n{tail}"


def test_the_leftover_scan_finds_a_lab_that_was_not_taken_down() -> None:
    """Positive control: with the lab up and no ``meshlab down``, the scan lists its
    namespaces, state folder and processes; after ``down`` it lists nothing."""
    import subprocess

    from kill9_harness import MESHLAB, host_snapshot, lab_netns_inodes, leftovers

    from meshlab.envs.local.lab import LocalEnv

    before = host_snapshot()
    env = LocalEnv(lab="k9pc")
    env.up()
    try:
        inodes = lab_netns_inodes("k9pc")
        found = leftovers("k9pc", before, inodes)
    finally:
        subprocess.run([*MESHLAB, "down", "--lab", "k9pc"], check=True, capture_output=True)
    assert any(line.startswith("netns ml-k9pc-") for line in found), found
    assert any(line.startswith("state folder") for line in found), found
    assert any(line.startswith("process ") and "meshlab.proxy" in line for line in found), found
    assert leftovers("k9pc", before, inodes) == []
