"""The fuzz harnesses in CI (fuzz/, issue #17): every input of the repo's corpus — the seeds
and the crashes found and fixed since — replays through its target without a crash, and each
atheris harness runs a short coverage-guided budget (5 s per target) that finds none. The long
campaign (≥ 1,000,000 executions per target) is ``fuzz/campaign.py``, run by hand
(``benchmarks/results/fuzz-latest.md``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ))

from targets import TARGETS  # fuzz/ is not a package: imported from its folder

BUDGET_S = 5


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_corpus_replays_without_a_crash(name):
    inputs = sorted((FUZZ / "corpus" / name).iterdir())
    assert len(inputs) >= 5, f"corpus of {name} has {len(inputs)} inputs"
    for path in inputs:
        TARGETS[name](path.read_bytes())  # raises on a crash (the test fails with it)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_coverage_guided_run_finds_no_crash(name, tmp_path):
    res = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{name}.py"), f"-max_total_time={BUDGET_S}",
         "-timeout=1", f"-artifact_prefix={tmp_path}/", str(tmp_path),
         str(FUZZ / "corpus" / name)],
        capture_output=True, text=True, timeout=BUDGET_S + 60, check=False)
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert res.returncode == 0 and not crashes, (crashes, res.stderr[-3000:])
    assert "\tDONE " in res.stderr and "Done " in res.stderr  # it ran to its budget
