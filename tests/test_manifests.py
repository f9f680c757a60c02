"""Manifest loading: the layered lab parses, and every kind of bad input fails in one line
naming the file and the field."""

import shutil
from pathlib import Path

import pytest

from meshlab.envs.local.lab import DEFAULT_MANIFESTS
from meshlab.errors import ManifestError
from meshlab.manifests.loader import load_topology
from meshlab.model import protocol_for_port


def test_layered_lab_topology():
    topo = load_topology(DEFAULT_MANIFESTS)
    pods = {p.name: p for p in topo.pods()}
    assert set(pods) == {"fortio-server-0", "fortio-server-l2-0", "netshoot-0"}
    assert pods["fortio-server-0"].node != pods["fortio-server-l2-0"].node
    assert pods["fortio-server-0"].meshed and pods["fortio-server-l2-0"].meshed
    assert not pods["netshoot-0"].meshed
    svc = topo.service("fortio-server")
    assert [p.name for p in topo.endpoints(svc)] == ["fortio-server-0"]
    assert {p.name: p.protocol for p in svc.ports} == {"http": "http", "http-m": "http",
                                                       "grpc": "grpc"}
    assert pods["fortio-server-0"].workload.containers[0].args == (
        "server", "-M", "8070 http://fortio-server-l2:8080")


@pytest.mark.parametrize("name,expected", [("http", "http"), ("http-m", "http"),
                                           ("grpc", "grpc"), ("tcp-echo", "tcp"),
                                           ("mysql", "tcp"), ("", "tcp"), ("http2", "http")])
def test_protocol_from_port_name(name, expected):
    assert protocol_for_port(name) == expected


def _broken(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(DEFAULT_MANIFESTS, dst)
    edit(dst)
    return dst


@pytest.mark.parametrize("edit,file,field", [
    (lambda d: (d / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n"),
     "x.yaml", "ConfigMap/c.kind"),
    (lambda d: (d / "fortio-server.yaml").write_text(
        (d / "fortio-server.yaml").read_text().replace("        image: docker.io/fortio/fortio\n", "")),
     "fortio-server.yaml", "StatefulSet/fortio-server.spec.template.spec.containers[0].image"),
    (lambda d: (d / "netshoot.yaml").write_text(
        (d / "netshoot.yaml").read_text().replace("  replicas: 1", "  replicas: 1\n  paused: true")),
     "netshoot.yaml", "StatefulSet/netshoot.spec.paused"),
    (lambda d: (d / "netshoot.yaml").write_text(
        (d / "netshoot.yaml").read_text().replace("- worknode5", "- worknode9")),
     "netshoot.yaml", "StatefulSet/netshoot.spec.template.spec.affinity"),
    (lambda d: (d / "fortio-server.yaml").write_text(
        (d / "fortio-server.yaml").read_text().replace("    port: 8080", "    prt: 8080")),
     "fortio-server.yaml", "Service/fortio-server.spec.ports[0].prt"),
    (lambda d: (d / "lab-cluster.yaml").write_text("kind: LabCluster\nmetadata: [\n"),
     "lab-cluster.yaml", "line"),
])
def test_broken_manifest_names_file_and_field(tmp_path, edit, file, field):
    folder = _broken(tmp_path, edit)
    with pytest.raises(ManifestError) as err:
        load_topology(folder)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(folder / file))
    assert field in msg


def test_missing_lab_cluster(tmp_path):
    folder = _broken(tmp_path, lambda d: (d / "lab-cluster.yaml").unlink())
    with pytest.raises(ManifestError, match="exactly one LabCluster"):
        load_topology(folder)


def _with_resources(d: Path, limits: str, annotations: str = "") -> None:
    """Give fortio-server-l2's main-app ``limits`` (YAML flow map) and its pod ``annotations``."""
    path = d / "fortio-server-l2.yaml"
    text = path.read_text().replace(
        "        imagePullPolicy: IfNotPresent\n",
        f"        imagePullPolicy: IfNotPresent\n        resources:\n          limits: {limits}\n", 1)
    if annotations:
        text = text.replace("      annotations:\n", f"      annotations:\n{annotations}", 1)
    path.write_text(text)


def _workload(topo, name: str):
    return next(wl for wl in topo.workloads if wl.name == name)


def test_resource_limits_and_proxy_annotations_are_parsed(tmp_path):
    folder = _broken(tmp_path, lambda d: _with_resources(
        d, '{cpu: "250m", memory: 128Mi}',
        '        sidecar.istio.io/proxyCPULimit: "1.5"\n'
        '        sidecar.istio.io/proxyMemoryLimit: 1Gi\n'))
    wl = _workload(load_topology(folder), "fortio-server-l2")
    assert (wl.containers[0].cpu_limit_m, wl.containers[0].memory_limit_bytes) == (250, 128 << 20)
    assert (wl.proxy_cpu_limit_m, wl.proxy_memory_limit_bytes) == (1500, 1 << 30)
    plain = _workload(load_topology(DEFAULT_MANIFESTS), "fortio-server-l2")
    assert plain.containers[0].cpu_limit_m is None and plain.proxy_cpu_limit_m is None


@pytest.mark.parametrize("limits,annotations,field,why", [
    ('{cpu: "0.1m"}', "", "containers[0].resources.limits.cpu", "must be at least 1m"),
    ("{cpu: lots}", "", "containers[0].resources.limits.cpu", "expected a quantity"),
    ("{memory: -5Mi}", "", "containers[0].resources.limits.memory", "must not be negative"),
    ("{}", "        sidecar.istio.io/proxyCPULimit: 2 cores\n",
     "annotations.sidecar.istio.io/proxyCPULimit", "expected a quantity"),
])
def test_a_bad_quantity_names_its_field(tmp_path, limits, annotations, field, why):
    folder = _broken(tmp_path, lambda d: _with_resources(d, limits, annotations))
    with pytest.raises(ManifestError) as err:
        load_topology(folder)
    assert str(err.value).startswith(str(folder / "fortio-server-l2.yaml"))
    assert field in str(err.value) and why in str(err.value), str(err.value)


@pytest.mark.parametrize("text,millicores", [("100m", 100), ("0.5", 500), (2, 2000),
                                             ("1e-3", 1), ("0.0015", 2), ("1k", 1_000_000)])
def test_cpu_quantities_in_millicores(text, millicores):
    from meshlab.manifests.quantity import cpu_millicores

    assert cpu_millicores(text) == millicores


@pytest.mark.parametrize("text,size", [("128Mi", 128 << 20), ("1G", 10 ** 9), ("1.5Ki", 1536),
                                       (4096, 4096), ("2e3", 2000)])
def test_memory_quantities_in_bytes(text, size):
    from meshlab.manifests.quantity import memory_bytes

    assert memory_bytes(text) == size
