"""What every benchmark shares: machine info, target verdicts, SIGTERM, writing the results.

A benchmark writes ``<out>/<name>-<UTC timestamp>.json`` (the raw record) and
``<out>/<name>-latest.md`` (its tables), and prints the markdown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import _nginx


def machine_info() -> dict:
    """CPU model, core count, kernel, Python, Locust, nginx and wrk versions.

    Locust's version comes from the package metadata: importing locust would monkey-patch the
    benchmark with gevent, and :func:`meshlab.envs.local.veth_pair.connect_in_netns`'s
    ``setns`` thread would then be a greenlet on the main thread, moving the whole benchmark
    into a lab netns.
    """
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    try:
        locust = importlib.metadata.version("locust")
    except importlib.metadata.PackageNotFoundError:
        locust = ""
    return {"cpu_model": cpu, "cores": len(list(Path("/sys/devices/system/cpu").glob("cpu[0-9]*"))),
            "kernel": platform.release(), "python": sys.version.split()[0], "locust": locust,
            "nginx": _nginx.nginx_version(),
            "wrk": (wrk.stdout or wrk.stderr).split("\n")[0].split(" Copyright")[0]}


def machine_line(m: dict) -> str:
    """The markdown line describing :func:`machine_info`'s record."""
    locust = f"Locust {m['locust']}, " if m.get("locust") else ""
    return (f"Machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, "
            f"Python {m['python']}, {locust}{m['nginx']}, {m['wrk']}.")


def verdict(value: float | None, target: float, *, higher_is_better: bool = False) -> dict:
    """``{"value", "target", "met"}``; a missing value is not met."""
    if value is None:
        return {"value": None, "target": target, "met": False}
    met = value >= target if higher_is_better else value <= target
    return {"value": value, "target": target, "met": met}


@contextlib.contextmanager
def bench_run(prefix: str) -> Iterator[tuple[dt.datetime, Path]]:
    """A benchmark run: SIGTERM becomes ``SystemExit`` (so ``finally`` blocks remove the
    namespaces), and a temporary work directory readable by the dropped-privilege servers.

    Yields:
        The UTC start time and the work directory (removed on exit).
    """

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        yield started, workdir


def write_results(out: Path, name: str, started: dt.datetime, doc: dict, markdown: str) -> None:
    """Write the JSON record and the ``-latest.md`` summary, and print the summary."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (out / f"{name}-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{name}-latest.md").write_text(markdown)
    print(markdown)
