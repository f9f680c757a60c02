"""Distributed loads as one Kubernetes Job per worker, through the real ``kubernetes`` client and
the in-test API server: the Job POST bodies (image, node, no sidecar, the runner under the print
wrapper), the pod log fetch, the exact merge, the Job deletes, the ``max_pods`` guardrail and the
dry-run printout. The fake server's "kubelet" (:class:`Kubelet`) runs each Job's container
command for real on this host (``sh`` + the runner with this interpreter) against a local HTTP
target, so the log the master parses is the one the wrapper printed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _hdr_buckets import buckets
from kube_fake_server import OPT_IN, FakeKube, kube_env

from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.envs.kube.guardrails import GuardrailError, check_lab_size
from meshlab.errors import LabError
from meshlab.experiment import Run
from meshlab.journal import RunJournal
from meshlab.load import hdr
from meshlab.load.driver import RUNNER_MODULE, LoadSpec
from meshlab.load.kube_jobs import (
    PRINT_WRAPPER,
    WORKER_CONTAINER,
    WRAPPER_NAME,
    result_from_log,
    run_load_jobs,
)
from meshlab.load.locust_runner import parse_args

NS = "meshlab-lab"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
NETSHOOT_IMAGE = "docker.io/nicolaka/netshoot:latest"


class Target:
    """A 127.0.0.1 HTTP server answering 200 to every GET, counting them."""

    def __init__(self) -> None:
        self.count = 0
        lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with lock:
                    target.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/echo"


class Kubelet:
    """Runs a Job's container command on this host; its pod is Running until the command ends,
    then Succeeded (exit 0) or Failed, and its log is the command's stdout and stderr."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs, self.results = tmp, [], []
        self.override: Callable[[dict[str, Any]], list[str] | None] = lambda job: None

    def __call__(self, ns: str, job: dict[str, Any]) -> Callable[[], tuple[str, str]]:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        command = self.override(job) or command
        log = self.tmp / f"{job['metadata']['name']}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        result = command[4] if command[:4] == ["sh", "-c", PRINT_WRAPPER, WRAPPER_NAME] else None
        self.results.append(result)

        def state() -> tuple[str, str]:
            code = proc.poll()
            if code is not None and result:
                Path(result).unlink(missing_ok=True)  # the container's /tmp goes with it
            phase = "Running" if code is None else "Succeeded" if code == 0 else "Failed"
            return phase, log.read_text()

        return state

    def stop(self) -> None:
        for proc in self.procs:  # the wrapper and the runner under it (one process group)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for result in filter(None, self.results):
            Path(result).unlink(missing_ok=True)


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


@pytest.fixture
def kubelet(fake, tmp_path) -> Iterator[Kubelet]:
    fake.job_handler = Kubelet(tmp_path)
    yield fake.job_handler
    fake.job_handler.stop()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.server.shutdown()
    server.server.server_close()


def env_up(fake: FakeKube, tmp_path: Path, **settings: Any) -> Any:
    fake.add_node("worknode5", OPT_IN)
    fake.add_node("worknode6", OPT_IN)
    env = kube_env(fake, tmp_path, runner_python=sys.executable, **settings)
    env.up()
    return env


def posted_jobs(fake: FakeKube) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.method == "POST" and r.path == JOBS]


def test_two_worker_jobs_run_the_load_and_their_logs_merge_exactly(fake, kubelet, target,
                                                                   tmp_path):
    env = env_up(fake, tmp_path)
    run = Run(env, RunJournal(tmp_path / "reports", "jobs"))
    result = run.load("dist", target.url, users=2, rate_per_s=100, duration_s=10,
                      max_requests=61, timeout_s=2, processes=2, jobs=True)

    assert (result.requests, result.processes, result.errors) == (61, 2, 0)
    assert target.count == 61
    assert run.journal.data["loads"][-1]["processes"] == 2
    parts = [json.loads((run.journal.dir / f"load-dist.p{i}.json").read_text()) for i in (0, 1)]
    assert [p["requests"] for p in parts] == [31, 30]
    assert buckets(result.hdr) == buckets(hdr.encode(hdr.merge(p["hdr"] for p in parts)))

    jobs = posted_jobs(fake)
    assert len(jobs) == 2
    for index, job in enumerate(jobs):
        template = job["spec"]["template"]
        pod_spec = template["spec"]
        assert job["spec"]["backoffLimit"] == 0 and pod_spec["restartPolicy"] == "Never"
        assert job["spec"]["activeDeadlineSeconds"] >= 10 + 2
        assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        assert template["metadata"]["labels"]["meshlab.io/load-worker"] == str(index)
        assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": "worknode5"}
        (container,) = pod_spec["containers"]
        assert (container["name"], container["image"]) == (WORKER_CONTAINER, NETSHOOT_IMAGE)
        command = container["command"]
        assert command[:4] == ["sh", "-c", PRINT_WRAPPER, WRAPPER_NAME]
        runner = command[5:]
        assert runner[:3] == [sys.executable, "-m", RUNNER_MODULE]
        part, out = parse_args(runner[3:])
        assert str(out) == command[4]
        assert (part.users, part.rate_per_s, part.max_requests) == (1, 50.0, 31 - index)

    logs = [(r.path.split("/")[-2], r.query["container"]) for r in fake.requests
            if r.path.endswith("/log") and "/meshlab-load-" in r.path]
    assert [(pod.rsplit("-", 2)[1], container) for pod, container in logs] == [
        ("0", [WORKER_CONTAINER]), ("1", [WORKER_CONTAINER])]  # one log read per worker
    deleted = [r for r in fake.requests if r.method == "DELETE" and r.path.startswith(JOBS)]
    assert sorted(r.path.rsplit("/", 1)[1] for r in deleted) == sorted(
        j["metadata"]["name"] for j in jobs)
    assert all(r.query["propagationPolicy"] == ["Foreground"] for r in deleted)  # pods go too
    assert not [k for k in fake.objects if k[0] == "/apis/batch/v1/jobs"]  # pods ended: gone
    assert not [p for (_, p) in fake.pods if p.startswith("meshlab-load-")]
    assert sorted(p.name for p in env.pods()) == ["fortio-server-0", "fortio-server-l2-0",
                                                  "netshoot-0"]


def test_a_failed_worker_fails_the_load_with_its_log_and_every_job_is_deleted(
        fake, kubelet, target, tmp_path):
    env = env_up(fake, tmp_path)
    kubelet.override = lambda job: (["sh", "-c", "echo 'runner exploded' >&2; exit 1"]
                                    if job["metadata"]["name"].endswith("-1") else None)
    spec = LoadSpec(url=target.url, users=2, rate_per_s=40, duration_s=2, timeout_s=1,
                    name="bad", processes=2)
    with pytest.raises(LabError, match=r"load 'bad': worker 1 \(meshlab-load-bad-\w+-1-"
                                       r"[a-z0-9]{5}\) failed: runner exploded"):
        run_load_jobs(env, "netshoot", spec, tmp_path / "load-bad.json")
    assert len([r for r in fake.requests if r.method == "DELETE"]) == 2
    assert all(o["metadata"].get("deletionTimestamp") for (c, _, _), o in fake.objects.items()
               if c == "/apis/batch/v1/jobs")  # gone, or waiting for a running worker's pod
    assert not (tmp_path / "load-bad.json").exists()


def test_workers_count_toward_max_pods_before_any_job_is_created(fake, kubelet, tmp_path):
    env = env_up(fake, tmp_path, max_pods=4)
    spec = LoadSpec(url="http://fortio-server:8070/echo", users=2, duration_s=1, processes=2)
    with pytest.raises(GuardrailError, match=r"refused: 2 load workers would bring the lab's 3 "
                                             r"pods to 5, more than max_pods=4; raise max_pods"):
        run_load_jobs(env, "netshoot", spec, tmp_path / "r.json")
    assert posted_jobs(fake) == []
    check_lab_size(env.settings, 3, workers=1)  # one worker would fit (3 + 1 <= 4)


def test_dry_run_prints_the_worker_jobs_and_their_collection(fake, tmp_path):
    out = io.StringIO()
    env = kube_env(fake, tmp_path, api=DryRunApi(out), dry_run=True)
    env.up()
    printed_by_up = len(out.getvalue())
    spec = LoadSpec(url="http://fortio-server:8070/echo", users=3, rate_per_s=90,
                    duration_s=5, name="dist", processes=3)
    with pytest.raises(LabError, match="load 'dist': dry run: the 3 worker Jobs were printed"):
        run_load_jobs(env, "netshoot", spec, tmp_path / "r.json")
    text = out.getvalue()[printed_by_up:]
    assert "&id" not in text  # plain YAML, no anchors
    assert text.count(f"kubectl apply -n {NS} -f - <<'EOF'\napiVersion: batch/v1\nkind: Job\n") == 3
    assert text.count("sidecar.istio.io/inject: 'false'") == 3
    assert text.count(f"# kubectl wait -n {NS} --for=condition=complete "
                      "job/meshlab-load-dist-") == 3
    assert text.count(f"# kubectl logs -n {NS} job/meshlab-load-dist-") == 3
    assert f"kubectl delete -n {NS} job.batch -l meshlab.io/load=dist-" in text
    assert "- --rate-per-s\n        - '30.0'\n" in text  # each worker a third of the rate
    assert fake.requests == []


def test_result_is_the_last_log_line():
    good = {"tool": "locust", "requests": 3}
    log = f"locust_runner: some warning\n\n{json.dumps(good)}\n\n"
    assert result_from_log(log, "w") == good
    with pytest.raises(LabError, match=r"w: no result JSON on the last line of its log: "
                                       r"Traceback\nboom"):
        result_from_log("Traceback\nboom\n", "w")
    with pytest.raises(LabError, match=r"\(empty log\)"):
        result_from_log("", "w")
