"""Container cgroups on this machine's real cgroup hierarchy (v1 here; the v2 branch is taken on
a stock Debian 12): a process started through ``enter_argv`` is inside before it runs (so its
children are too), a CFS quota throttles a busy loop to its share, the freezer stops it and
thaws it, and ``remove`` kills what is inside and leaves no directory. No network is involved."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from meshlab.envs.local.cgroups import Cgroups, remove_cgroup_dirs
from meshlab.polling import wait_until

LAB = "cgt"
BUSY = [sys.executable, "-c", "import os\nif os.fork() == 0:\n    pass\nwhile True:\n    pass"]


@pytest.fixture
def groups():
    """The machine's cgroups; the test's tree is removed afterwards, and checked gone."""
    groups = Cgroups()
    yield groups
    groups.remove(Cgroups.rel(LAB))
    assert not any(d.exists() for d in groups.dirs(Cgroups.rel(LAB)).values())


def _start(groups: Cgroups, rel: str) -> subprocess.Popen[bytes]:
    groups.create(rel)
    return subprocess.Popen(groups.enter_argv(rel, BUSY))


def test_the_process_and_its_child_are_inside_before_they_run(groups):
    rel = Cgroups.rel(LAB, "pod-0", "app")
    proc = _start(groups, rel)
    wait_until(lambda: len(groups.procs(rel)) == 2, timeout_s=5, what="parent and child")
    assert proc.pid in groups.procs(rel)
    assert groups.procs(Cgroups.rel(LAB)) == groups.procs(rel)  # the pod's parent sees them
    groups.remove(Cgroups.rel(LAB))
    assert proc.wait(timeout=5) == -9


def test_a_100m_quota_throttles_a_busy_loop_to_a_tenth_of_a_cpu(groups):
    rel = Cgroups.rel(LAB, "pod-0", "app")
    groups.create(rel)
    groups.set_cpu_limit(rel, 100)
    assert groups.cpu_limit(rel) == 100
    _start(groups, rel)
    wait_until(lambda: groups.cpu_stat(rel).nr_periods >= 2, timeout_s=5, what="periods")
    start, t0 = groups.cpu_stat(rel), time.monotonic()
    wait_until(lambda: time.monotonic() - t0 >= 1.0, timeout_s=5, every_s=0.1,
               what="one second of quota periods")  # an observation window, 10 CFS periods
    end, wall_s = groups.cpu_stat(rel), time.monotonic() - t0
    share = (end.usage_us - start.usage_us) / 1e6 / wall_s
    assert 0.05 <= share <= 0.15, share
    assert end.nr_throttled - start.nr_throttled >= 5
    assert end.throttled_us > start.throttled_us
    groups.set_cpu_limit(rel, None)
    assert groups.cpu_limit(rel) is None


def test_freeze_stops_every_process_and_thaw_resumes_them(groups):
    rel = Cgroups.rel(LAB, "pod-0", "app")
    _start(groups, rel)
    wait_until(lambda: len(groups.procs(rel)) == 2, timeout_s=5, what="parent and child")
    groups.freeze(rel)
    assert groups.frozen(rel)
    frozen_at = groups.cpu_stat(rel).usage_us
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 >= 0.3, timeout_s=2, every_s=0.05,
               what="a frozen window")
    assert groups.cpu_stat(rel).usage_us == frozen_at
    groups.thaw(rel)
    assert not groups.frozen(rel)
    wait_until(lambda: groups.cpu_stat(rel).usage_us > frozen_at, timeout_s=5, what="running")


def test_a_frozen_tree_is_removed_with_its_processes(groups):
    rel = Cgroups.rel(LAB, "pod-0", "app")
    proc = _start(groups, rel)
    wait_until(lambda: len(groups.procs(rel)) == 2, timeout_s=5, what="parent and child")
    groups.freeze(rel)
    top = groups.dirs(Cgroups.rel(LAB))
    removed = remove_cgroup_dirs(list(top.values()))
    assert len(removed) == 3 * len(top)  # lab, pod, container in every hierarchy
    assert proc.wait(timeout=5) == -9


def test_a_memory_limit_is_set_and_lifted(groups):
    rel = Cgroups.rel(LAB, "pod-0", "app")
    groups.create(rel)
    groups.set_memory_limit(rel, 64 << 20)
    name = "memory.limit_in_bytes" if groups.version == 1 else "memory.max"
    path = groups.dirs(rel)["memory" if groups.version == 1 else "unified"] / name
    assert int(path.read_text()) == 64 << 20
    groups.set_memory_limit(rel, None)
    lifted = path.read_text().strip()
    assert lifted == "max" if groups.version == 2 else int(lifted) >= 2 ** 62  # v1: PAGE_COUNTER_MAX
    assert groups.memory_bytes(rel) >= 0


def test_the_v2_layout_and_file_formats_on_a_cgroup2_shaped_tree(tmp_path):
    """This machine takes the v1 branch; stock Debian 12 takes v2. The v2 branch's paths and
    file formats (``cgroup.subtree_control`` down the path, ``cpu.max``, ``memory.max``,
    ``cpu.stat``, ``memory.current``) checked on a directory shaped like a cgroup2 mount; the
    kernel side of v2 (writes taking effect) is not exercised here."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    groups = Cgroups(tmp_path)
    assert groups.version == 2 and groups.has_freezer and groups.freezer_file == "cgroup.freeze"
    rel = Cgroups.rel(LAB, "pod-0", "app")
    (leaf,) = groups.create(rel)
    assert leaf == tmp_path / rel
    for node in (tmp_path, tmp_path / "meshlab", tmp_path / "meshlab" / LAB,
                 tmp_path / "meshlab" / LAB / "pod-0"):
        assert (node / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert not (leaf / "cgroup.subtree_control").exists()  # processes live in the leaf only
    (leaf / "cpu.max").write_text("max 100000\n")
    assert groups.cpu_limit(rel) is None
    groups.set_cpu_limit(rel, 250)
    assert (leaf / "cpu.max").read_text() == "25000 100000" and groups.cpu_limit(rel) == 250
    groups.set_memory_limit(rel, 1 << 20)
    assert (leaf / "memory.max").read_text() == str(1 << 20)
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
                                   "nr_periods 7\nnr_throttled 3\nthrottled_usec 900\n")
    (leaf / "memory.current").write_text("4096\n")
    assert groups.cpu_stat(rel).__dict__ == {"usage_us": 1500, "nr_periods": 7,
                                             "nr_throttled": 3, "throttled_us": 900}
    assert groups.memory_bytes(rel) == 4096
    assert groups.enter_argv(rel, ["true"])[2].startswith(f"echo $$ > {leaf}/cgroup.procs && ")
