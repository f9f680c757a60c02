"""Container cgroups and the container faults on a real lab: every container (sidecar workers
included) runs in its own cgroup with the manifest's limits; ``container-pause`` freezes L2's
app so a request hangs on an open connection and is answered after the thaw; ``cpu-limit``
throttles L2's sidecar under requests and restores the limit it found; bad input changes
nothing; ``meshlab down`` removes the cgroups.

Requests go from netshoot (no sidecar) to L2's pod IP on 8080, where L2's sidecar takes them
(inbound redirect) and forwards to the app. ``lab`` and ``unchanged`` are in ``conftest.py``.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from http_probe import read_response

from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.netns_socket import netns_connect
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS
from meshlab.errors import ConfigError
from meshlab.faults.base import active
from meshlab.faults.container_pause import ContainerPause
from meshlab.faults.cpu_limit import CpuLimit
from meshlab.faults.cpu_stress import CpuStress
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
LAB = "hct"
CLIENT, L2 = "netshoot-0", "fortio-server-l2-0"
REQUEST = b"GET /echo?size=10 HTTP/1.1\r\nHost: l2\r\n\r\n"


def _connect(lab) -> socket.socket:
    return netns_connect(lab.pod_shell(CLIENT).netns, lab.pod(L2).ip, 8080, 2.0)


def test_every_container_runs_in_its_own_cgroup(lab):
    groups = Cgroups()
    for key, pid in lab.state.pids.items():
        pod, container = key.split("/")
        assert pid in groups.procs(Cgroups.rel(LAB, pod, container)), key
    sidecar = groups.procs(Cgroups.rel(LAB, L2, "istio-proxy"))
    assert len(sidecar) >= 3  # the main process and its 2 workers (concurrency 2), forked inside
    assert lab.containers(L2) == ["istio-proxy", "main-app"]
    usage = lab.container_usage(L2)
    assert usage["istio-proxy"]["cpu_usage_us"] > 0 and usage["main-app"]["memory_bytes"] > 0
    assert usage["main-app"]["cpu_limit_m"] is None  # the base manifests set no limits


def test_container_pause_hangs_a_request_and_the_thaw_answers_it(lab, unchanged):
    fault = ContainerPause(target=L2)
    with _connect(lab) as sock:
        sock.sendall(REQUEST)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        with active(fault, lab):
            assert fault.container == "main-app"
            assert lab.container_paused(L2, "main-app")
            sock.settimeout(1.0)
            sock.sendall(REQUEST)
            assert read_response(sock) == b""  # no answer, no reset: the connection is open
            sock.settimeout(5.0)
        assert not lab.container_paused(L2, "main-app")
        assert read_response(sock).startswith(b"HTTP/1.1 200")  # the waiting request is served


def test_cpu_limit_throttles_the_sidecar_and_revert_restores_none(lab, unchanged):
    fault = CpuLimit(target=L2, container="istio-proxy", cpu_m=50)
    before = lab.container_usage(L2)["istio-proxy"]
    with active(fault, lab), _connect(lab) as sock:
        assert lab.container_cpu_limit(L2, "istio-proxy") == 50
        sock.settimeout(5.0)
        for _ in range(300):  # bounded: 300 requests on one keep-alive connection
            sock.sendall(REQUEST)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        during = lab.container_usage(L2)["istio-proxy"]
    assert fault.saved and fault.previous_m is None
    assert during["nr_throttled"] - before["nr_throttled"] >= 3, (before, during)
    assert lab.container_cpu_limit(L2, "istio-proxy") is None


def test_cpu_stress_burns_inside_the_container_under_its_limit(lab, unchanged):
    """Two burners at 100 % in L2's app container, limited to 200m: the container uses its
    quota (not two CPUs) and is throttled; revert leaves no burner."""
    stress = CpuStress(target=L2, workers=2, load_pct=100)
    with active(CpuLimit(target=L2, cpu_m=200), lab), active(stress, lab):
        start, t0 = lab.container_usage(L2)["main-app"], time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= 1.5, timeout_s=5, every_s=0.1,
                   what="an observation window of 15 CFS periods")
        end, wall_s = lab.container_usage(L2)["main-app"], time.monotonic() - t0
    share = (end["cpu_usage_us"] - start["cpu_usage_us"]) / 1e6 / wall_s
    assert 0.15 <= share <= 0.25, share  # the 200m quota, not the burners' 2 CPUs
    assert end["nr_throttled"] - start["nr_throttled"] >= 10
    assert not stress._pids(lab, L2)  # the unchanged fixture also checks the netns processes


@pytest.mark.parametrize(("fault", "message"), [
    (lambda: ContainerPause(target=L2, container="nope"),
     "container-pause: container: pod fortio-server-l2-0 has no container 'nope'"),
    (lambda: CpuLimit(target=L2, cpu_m=50, container="nope"), "cpu-limit: container:"),
    (lambda: ContainerPause(target="nope"), "container-pause: target: no pod"),
    (lambda: CpuStress(target=L2, container="nope"), "cpu-stress: container:"),
])
def test_an_unknown_pod_or_container_is_named_and_nothing_changes(lab, unchanged, fault,
                                                                  message):
    with pytest.raises(ConfigError, match=message), active(fault(), lab):
        pass


def test_a_limit_below_1m_and_bad_stress_parameters_are_refused():
    with pytest.raises(ConfigError, match="cpu-limit: cpu_m: must be a whole number of "
                                          "millicores >= 1"):
        CpuLimit(target=L2, cpu_m=0)
    with pytest.raises(ConfigError, match="cpu-stress: workers: must be a whole number in"):
        CpuStress(target=L2, workers=0)
    with pytest.raises(ConfigError, match="cpu-stress: load_pct: must be a number in 1..100"):
        CpuStress(target=L2, load_pct=150)


def test_manifest_limits_become_the_containers_cgroup_limits(tmp_path, running_lab):
    """``resources.limits`` and Istio's proxy annotations are the CFS quota and memory limit;
    ``down`` removes every cgroup (checked by ``running_lab``)."""
    folder = tmp_path / "manifests"
    shutil.copytree(DEFAULT_MANIFESTS, folder)
    path = folder / "fortio-server-l2.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "StatefulSet":
            template = doc["spec"]["template"]
            template["metadata"]["annotations"].update({
                "sidecar.istio.io/proxyCPULimit": "300m",
                "sidecar.istio.io/proxyMemoryLimit": "512Mi"})
            template["spec"]["containers"][0]["resources"] = {
                "limits": {"cpu": "0.5", "memory": "256Mi"}}
    path.write_text(yaml.safe_dump_all(docs))
    with running_lab("hlim", manifests=[folder]) as env:
        groups = Cgroups()
        usage = env.container_usage(L2)
        assert usage["main-app"]["cpu_limit_m"] == 500
        assert usage["istio-proxy"]["cpu_limit_m"] == 300
        name = "memory.limit_in_bytes" if groups.version == 1 else "memory.max"
        ctrl = "memory" if groups.version == 1 else "unified"
        for container, limit in (("main-app", 256 << 20), ("istio-proxy", 512 << 20)):
            cgroup = groups.dirs(Cgroups.rel("hlim", L2, container))[ctrl]
            assert int((cgroup / name).read_text()) == limit
        assert Path(groups.dirs(Cgroups.rel("hlim"))[ctrl]).is_dir()
    wait_until(lambda: not any(d.exists() for d in groups.dirs(Cgroups.rel("hlim")).values()),
               timeout_s=5, what="hlim's cgroups removed")
