"""Loads on the kube env, through the real ``kubernetes`` client and the in-test API server: the
runner runs in the client pod with ``runner_python`` and a pod-local ``--out``, its result is
fetched with ``cat`` and removed there; a background load is an exec stream whose ``stop()``
sends ``kill -TERM <pid>`` into the pod; runner failures carry the runner's stderr. The fake
server's exec handler plays the pod (:class:`FakeClientPod`). The pid wrapper itself is run for
real with the local ``sh``."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_fake_server import OPT_IN, FakeKube, kube_env

from meshlab.envs.kube.dry_run import DryRunApi
from meshlab.envs.kube.process import PID_WRAPPER, WRAPPER_NAME, wrap
from meshlab.envs.kube.settings import DEFAULT_RUNNER_PYTHON, KubeSettings, settings_from_dict
from meshlab.errors import ConfigError, LabError
from meshlab.experiment import Run
from meshlab.journal import RunJournal
from meshlab.load import hdr
from meshlab.load.driver import RUNNER_MODULE, LoadSpec
from meshlab.load.start import run_load, start_load
from meshlab.polling import wait_until

NS = "meshlab-lab"
URL = "http://fortio-server:8070/echo?size=100"
PID = 4242
REMOTE = re.compile(r"^/tmp/meshlab-load-(?P<name>[\w.-]+)-[0-9a-f]{8}\.json$")
FAILURE = "Traceback (most recent call last):\nlocust_runner: load against x failed: boom\n"


def _result(requests: int) -> dict[str, Any]:
    """A valid runner result (CONTRACTS.md §2) with ``requests`` requests in one second."""
    hist = hdr.new_histogram()
    for _ in range(requests):
        hist.record_value(1500)
    return {"tool": "locust", "mode": "closed-loop", "target_url": URL, "users": 2,
            "rate_per_s": None, "duration_s": 1.0, "start_epoch_s": 1_700_000_000.0,
            "end_epoch_s": 1_700_000_001.0, "requests": requests, "errors": 0,
            "status_counts": {"200": requests}, "tps": float(requests), "error_rate": 0.0,
            "latency_us": {"min": 1500, "mean": 1500.0, "p50": 1500, "p90": 1500, "p99": 1500,
                           "p999": 1500, "max": 1500},
            "hdr": hdr.encode(hist),
            "series": [{"t_s": 0, "requests": requests, "errors": 0,
                        "status_counts": {"200": requests}, "p50_us": 1500, "p90_us": 1500,
                        "p99_us": 1500, "max_us": 1500, "hdr": hdr.encode(hist)}]}


FULL, PARTIAL = _result(100), _result(7)


class FakeClientPod:
    """The client pod behind the fake server's exec: a filesystem dict and the programs the
    driver runs there (the runner, the pid wrapper, ``cat``, ``rm -f``, ``kill``).

    The runner writes :data:`FULL` at ``--out`` after its ``--duration-s`` (a background one),
    :data:`PARTIAL` when SIGTERM came first, nothing when SIGKILL came or ``fail`` is set
    (then it exits 1 with ``fail`` on stderr).
    """

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.fail: str | None = None
        self.signalled: int | None = None
        self._signal = threading.Event()

    def __call__(self, pod: str, container: str, argv: list[str], stdin: bytes
                 ) -> tuple[int, str, str]:
        if argv[:4] == ["sh", "-c", PID_WRAPPER, WRAPPER_NAME]:
            pid_file, runner = argv[4], argv[5:]
            self.files[pid_file] = f"{PID}\n"
            try:
                duration_s = float(runner[runner.index("--duration-s") + 1])
                self._signal.wait(timeout=duration_s)
                if self.signalled == signal.SIGKILL:
                    return 128 + signal.SIGKILL, "", ""
                return self._runner(runner, PARTIAL if self.signalled else FULL)
            finally:
                del self.files[pid_file]
        if argv[:2] == ["sh", "-c"] and (m := re.fullmatch(r"kill -(\w+) (\d+)", argv[2])):
            if int(m[2]) != PID or f"{PID}\n" not in self.files.values():
                return 1, "", f"sh: kill: ({m[2]}) - No such process\n"
            self.signalled = signal.Signals[f"SIG{m[1]}"]
            self._signal.set()
            return 0, "", ""
        if argv[0] == "cat":
            if argv[1] in self.files:
                return 0, self.files[argv[1]], ""
            return 1, "", f"cat: {argv[1]}: No such file or directory\n"
        if argv[:2] == ["rm", "-f"]:
            for path in argv[2:]:
                self.files.pop(path, None)
            return 0, "", ""
        if argv[1:3] == ["-m", RUNNER_MODULE]:
            return self._runner(argv, FULL)
        return 127, "", f"exec: {argv[0]}: not found\n"

    def _runner(self, argv: list[str], result: dict[str, Any]) -> tuple[int, str, str]:
        if self.fail is not None:
            return 1, "", self.fail
        self.files[argv[argv.index("--out") + 1]] = json.dumps(result)
        return 0, "", ""


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


@pytest.fixture
def pod(fake) -> FakeClientPod:
    fake.exec_handler = FakeClientPod()
    return fake.exec_handler


@pytest.fixture
def env(fake, pod, tmp_path):
    fake.add_node("worknode5", OPT_IN)
    fake.add_node("worknode6", OPT_IN)
    lab = kube_env(fake, tmp_path)
    lab.up()
    return lab


def _execs(fake: FakeKube) -> list[tuple[str, str, list[str]]]:
    return [(r.path.split("/")[-2], r.query["container"][0], r.query["command"])
            for r in fake.requests if r.path.endswith("/exec")]


def _remote(argv: list[str], name: str) -> str:
    out = argv[argv.index("--out") + 1]
    m = REMOTE.match(out)
    assert m and m["name"] == name, out
    return out


def test_load_runs_in_the_client_pod_and_fetches_its_result(fake, pod, env, tmp_path):
    run = Run(env, RunJournal(tmp_path / "reports", "kube-load"))
    before = len(_execs(fake))
    result = run.load("baseline", URL, users=2, rate_per_s=50, duration_s=1)

    (runner, cat, rm) = _execs(fake)[before:]
    assert runner[:2] == cat[:2] == rm[:2] == ("netshoot-0", "netshoot")
    argv = runner[2]
    assert argv[:3] == [DEFAULT_RUNNER_PYTHON, "-m", RUNNER_MODULE]
    assert argv[argv.index("--url") + 1] == URL and argv[argv.index("--rate-per-s") + 1] == "50.0"
    remote = _remote(argv, "baseline")
    assert cat[2] == ["cat", remote] and rm[2] == ["rm", "-f", remote]
    assert pod.files == {}  # removed in the pod
    local = run.journal.dir / "load-baseline.json"
    assert json.loads(local.read_text()) == FULL
    assert (result.name, result.requests, result.tps) == ("baseline", 100, 100.0)
    assert run.journal.data["loads"][-1]["requests"] == 100


def test_runner_python_setting_is_the_pods_interpreter(fake, pod, tmp_path):
    fake.add_node("worknode5", OPT_IN)
    fake.add_node("worknode6", OPT_IN)
    env = kube_env(fake, tmp_path, runner_python="/usr/local/bin/python3.12")
    env.up()
    run_load(env.pod_shell("netshoot"), LoadSpec(url=URL, users=1, duration_s=1),
             tmp_path / "r.json")
    assert _execs(fake)[-3][2][0] == "/usr/local/bin/python3.12"
    assert KubeSettings().runner_python == DEFAULT_RUNNER_PYTHON
    assert settings_from_dict({"runner_python": "python3"}).runner_python == "python3"
    for bad in ("", "/opt/my venv/python", 3):
        with pytest.raises(ConfigError, match=r"^f\.yaml: runner_python: must be an interpreter"):
            settings_from_dict({"runner_python": bad}, "f.yaml")


def test_background_load_stop_sends_sigterm_into_the_pod_and_returns_the_partial_result(
        fake, pod, env, tmp_path):
    run = Run(env, RunJournal(tmp_path / "reports", "kube-bg"))
    before = len(_execs(fake))
    with run.background_load("during", URL, users=2, duration_s=30) as handle:
        assert handle.running
        result = handle.stop()
    assert handle.process.pid == PID and handle.process.returncode == 0
    assert (result.name, result.requests) == ("during", 7)
    assert run.journal.data["loads"][-1]["requests"] == 7  # the block's wait: the same result

    execs = [argv for _, _, argv in _execs(fake)[before:]]
    wrapper = execs[0]
    assert wrapper[:4] == ["sh", "-c", PID_WRAPPER, WRAPPER_NAME]
    pid_file, runner = wrapper[4], wrapper[5:]
    assert runner[:3] == [DEFAULT_RUNNER_PYTHON, "-m", RUNNER_MODULE]
    remote = _remote(runner, "during")
    assert set(map(tuple, execs[1:-3])) == {("cat", pid_file)}  # polled until written
    assert execs[-3:] == [["sh", "-c", f"kill -TERM {PID}"], ["cat", remote],
                          ["rm", "-f", remote]]
    assert pod.files == {}
    assert json.loads((run.journal.dir / "load-during.json").read_text()) == PARTIAL


def test_background_load_that_ends_by_itself_is_waited_for(fake, pod, env, tmp_path):
    handle = start_load(env.pod_shell("netshoot"), LoadSpec(url=URL, users=1, duration_s=0.3,
                                                           name="short"), tmp_path / "s.json")
    result = handle.wait()
    assert result.requests == 100 and pod.signalled is None
    assert handle.stop().requests == 100  # already ended: no signal, the same result
    assert [argv[0] for _, _, argv in _execs(fake)].count("sh") == 1
    assert pod.files == {}


def test_runner_failure_surfaces_its_stderr(fake, pod, env, tmp_path):
    pod.fail = FAILURE
    shell = env.pod_shell("netshoot")
    with pytest.raises(LabError, match=r"(?s)load 'boom' failed \(exit 1\) on netshoot-0: "
                                       r"Traceback.*load against x failed: boom"):
        run_load(shell, LoadSpec(url=URL, users=1, duration_s=1, name="boom"),
                 tmp_path / "boom.json")
    assert _execs(fake)[-1][2][:2] == ["rm", "-f"] and pod.files == {}
    assert not (tmp_path / "boom.json").exists()

    handle = start_load(shell, LoadSpec(url=URL, users=1, duration_s=0.2, name="bg-boom"),
                        tmp_path / "bg.json")
    with pytest.raises(LabError, match=r"(?s)load 'bg-boom' failed \(exit 1\): Traceback.*boom"):
        handle.wait()
    assert (tmp_path / "bg.json.stderr").read_text() == FAILURE  # stderr streamed to the file
    assert _execs(fake)[-1][2][:2] == ["rm", "-f"] and pod.files == {}


def test_a_load_that_overruns_is_killed_in_the_pod(fake, pod, env, tmp_path):
    handle = start_load(env.pod_shell("netshoot"), LoadSpec(url=URL, users=1, duration_s=30,
                                                           name="slow"), tmp_path / "slow.json")
    with pytest.raises(LabError, match="load 'slow' did not finish within 0 s; killed"):
        handle.wait(timeout_s=0.2)
    assert pod.signalled == signal.SIGKILL
    assert handle.process.returncode == 128 + signal.SIGKILL
    assert ["sh", "-c", f"kill -KILL {PID}"] in [argv for _, _, argv in _execs(fake)]
    assert pod.files == {}


def test_dry_run_prints_the_load_commands_then_fails_for_the_skip(fake, tmp_path):
    """A dry run measures nothing: the runner's exec (and the fetch) are printed, then the
    empty result fails the load, which ``--meshlab-dry-run`` reports as a skip."""
    out = io.StringIO()
    env = kube_env(fake, tmp_path, api=DryRunApi(out), dry_run=True)
    env.up()
    shell = env.pod_shell("netshoot")
    with pytest.raises(LabError, match=r"load 'dry': cannot fetch its result /tmp/meshlab-load-"
                                       r"dry-\w+\.json from netshoot-0 \(exit 0\): empty file"):
        run_load(shell, LoadSpec(url=URL, users=1, duration_s=1, name="dry"), tmp_path / "d.json")
    handle = start_load(shell, LoadSpec(url=URL, users=1, duration_s=1, name="bg"),
                        tmp_path / "bg.json")
    with pytest.raises(LabError, match="cannot fetch its result .* empty file"):
        handle.stop()
    lines = [line for line in out.getvalue().splitlines()
             if line.startswith(f"kubectl exec -n {NS} netshoot-0 -c netshoot -- ")]
    cmds = [line.split(" -- ", 1)[1] for line in lines]
    assert cmds[0].startswith(f"{DEFAULT_RUNNER_PYTHON} -m {RUNNER_MODULE} --url ")
    assert re.match(r"cat /tmp/meshlab-load-dry-\w+\.json$", cmds[1])
    assert re.match(r"rm -f /tmp/meshlab-load-dry-\w+\.json$", cmds[2])
    assert cmds[3].startswith(f"sh -c '{PID_WRAPPER}' {WRAPPER_NAME} /tmp/meshlab-bg-")
    assert f"{DEFAULT_RUNNER_PYTHON} -m {RUNNER_MODULE}" in cmds[3]
    assert fake.requests == []


def test_pid_wrapper_runs_the_command_with_its_pid_on_file(tmp_path: Path):
    """The wrapper for real (local ``sh``): the pid file names the command, which a SIGTERM to
    that pid ends; its status is the wrapper's, and the pid file is gone after."""
    pid_file, ready = tmp_path / "x.pid", tmp_path / "handler.ready"
    handler = ("import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
               f"open({str(ready)!r}, 'w').close()\ntime.sleep(30)")
    proc = subprocess.Popen(wrap([sys.executable, "-c", handler], str(pid_file)))
    try:
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                             timeout_s=10, what="pid file"))
        assert pid != proc.pid  # the command's own pid, not the wrapper's
        # the pid file exists as soon as the command is spawned; its SIGTERM handler only once
        # the interpreter has started: a TERM before that would kill it (status 143)
        wait_until(ready.exists, timeout_s=10, what="the command's SIGTERM handler installed")
        subprocess.run(["sh", "-c", f"kill -TERM {pid}"], check=True)
        assert proc.wait(timeout=10) == 0
        assert not pid_file.exists()
    finally:
        proc.kill()
        proc.wait()
    failing = subprocess.run(wrap(["sh", "-c", "exit 3"], str(pid_file)), check=False,
                             timeout=10)
    assert failing.returncode == 3 and not pid_file.exists()
