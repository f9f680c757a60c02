"""``meshlab`` command line: bring the lab up/down, run suites, inject faults by hand
(``meshlab fault``, :mod:`meshlab.fault_cli`), re-render reports.

Exit codes: 0 success, 1 a suite failed, 2 bad input (manifest/option), 3 lab error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from meshlab.errors import ConfigError, LabError, MeshlabError
from meshlab.fault_cli import fault_app

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.envs.local.lab import LocalEnv

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="meshlab: chaos-testing lab for service meshes (Istio/Envoy).")
app.add_typer(fault_app, name="fault")

LAB = typer.Option("lab", "--lab", help="lab name (its netns are ml-<lab>-…)")
MANIFESTS = typer.Option(None, "--manifests", help="manifests folder "
                         "(default: manifests/fortio-layered)")

OVERLAY = typer.Option(None, "--overlay", help="add manifests/overlays/NAME over the base "
                       "manifests (repeatable, applied in order)")
PROMETHEUS = typer.Option(False, "--prometheus", help="also start the lab's Prometheus "
                          "(scrapes every sidecar every 5 s, inside the lab's cluster netns)")
PATHS = typer.Argument(None, help="suites (default: suites/)")
REPORTS = typer.Option(Path("reports"), "--reports", help="reports folder")
ENV = typer.Option("local", "--env", help="where the suites run: local (network-namespace lab) "
                   "or kube (a Kubernetes cluster with Istio; see docs/KUBE.md)")
KUBE_CONFIG = typer.Option(None, "--kube-config", help="kube env settings YAML (namespace, "
                           "allow-list, node opt-in label, blast radius, Prometheus, SSH)")
DRY_RUN = typer.Option(False, "--dry-run", help="kube env: print every manifest and command "
                       "instead of touching the cluster")


def _fail(exc: MeshlabError) -> None:
    code = 2 if isinstance(exc, ConfigError) else 3
    typer.echo(f"meshlab: error: {exc}", err=True)
    raise typer.Exit(code)


def _env(manifests: Path | None, lab: str, overlays: list[str] | None = None) -> LocalEnv:
    from meshlab.envs.factory import build_env
    from meshlab.envs.manifest_sets import manifest_set

    return cast("LocalEnv", build_env("local", manifest_set(manifests, overlays or ()), lab))


@app.command()
def up(manifests: Path | None = MANIFESTS, lab: str = LAB,
       overlay: list[str] | None = OVERLAY, prometheus: bool = PROMETHEUS) -> None:
    """Build the local lab from the manifests (plus overlays) and start every pod (cleans
    leftovers first)."""
    url = None
    try:
        from meshlab.experiment.labs import lab_up

        env = _env(manifests, lab, overlay)
        for line in lab_up(env):
            typer.echo(f"reverted leftover fault {line}")
        if prometheus:
            url = env.start_prometheus()
    except MeshlabError as exc:
        _fail(exc)
    for pod in env.pods():
        typer.echo(f"{pod.name:24} {pod.ip:12} node={pod.node:10} "
                   f"{'meshed' if pod.meshed else 'no sidecar'}")
    if url:
        typer.echo(f"prometheus {url} (in netns {env.plan.cluster_netns}: "
                   f"'ip netns exec {env.plan.cluster_netns} curl {url}/api/v1/targets')")
    typer.echo(f"lab {lab!r} is up; 'meshlab down --lab {lab}' removes it")


@app.command()
def down(lab: str = LAB) -> None:
    """Remove the lab and anything a dead run left (active faults, processes, netns, rules,
    state)."""
    from meshlab.envs.local.state import cleanup
    from meshlab.faults.ledger import revert_leftovers

    for line in revert_leftovers("local", lab):  # what lab_down does, without needing the
        typer.echo(f"reverted leftover fault {line}")  # manifests the lab was built from
    removed = cleanup(lab)
    typer.echo(f"lab {lab!r} is down ({len(removed)} namespace(s) removed)")


@app.command()
def status(lab: str = LAB) -> None:
    """Show the lab's state, namespaces, processes and container restart counts as JSON."""
    from meshlab.envs.local.pod_status import lab_status
    from meshlab.envs.local.state import LabState, leftovers

    typer.echo(json.dumps(lab_status(LabState.load(lab), lab, leftovers(lab)), indent=1))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(ctx: typer.Context, paths: list[str] = PATHS, reports: Path = REPORTS, lab: str = LAB,
        manifests: Path | None = MANIFESTS, env: str = ENV, kube_config: Path | None = KUBE_CONFIG,
        dry_run: bool = DRY_RUN) -> None:
    """Run chaos suites with pytest (extra options pass through), print the report paths."""
    import pytest

    args = list(paths or ["suites"]) + list(ctx.args)
    args += [f"--meshlab-reports={reports}", f"--meshlab-lab={lab}", f"--meshlab-env={env}"]
    if kube_config:
        args.append(f"--meshlab-kube-config={kube_config}")
    if dry_run:
        args.append("--meshlab-dry-run")
    if manifests:
        args.append(f"--meshlab-manifests={manifests}")
    before = {p.parent for p in reports.glob("*/results.json")}
    code = pytest.main(args)
    made = sorted(p.parent for p in reports.glob("*/results.json") if p.parent not in before)
    for run_dir in made:
        html = run_dir / "report.html"
        typer.echo(f"report: {(html if html.exists() else run_dir / 'results.json').resolve()}")
    index = reports / "index.html"
    if index.exists():
        typer.echo(f"report index: {index.resolve()}")
    raise typer.Exit(int(code))


@app.command()
def load(url: str = typer.Argument(..., help="target as the client pod sees it, e.g. "
                                   "http://fortio-server:8070/echo"),
         mode: str = typer.Option("open-loop", "--mode", help="open-loop (constant rate, "
                                  "coordinated-omission corrected) or closed-loop (Locust users)"),
         rate_per_s: float | None = typer.Option(100.0, "--rate", help="requests/s (open loop: "
                                                 "the schedule; closed loop: a pacing cap)"),
         duration_s: float = typer.Option(10.0, "--duration-s", help="run time in seconds"),
         connections: int = typer.Option(16, "--connections", help="open loop: keep-alive "
                                         "connection pool; closed loop: Locust users"),
         distribution: str = typer.Option("constant", "--distribution",
                                          help="open loop: constant or poisson arrivals"),
         processes: int = typer.Option(1, "--processes", help="runner processes (histograms "
                                       "merged exactly)"),
         from_pod: str = typer.Option("netshoot", "--from-pod", help="client pod"),
         lab: str = LAB, reports: Path = REPORTS) -> None:
    """Drive one bounded load from a pod of the running local lab; write a run report and print
    TPS and corrected/uncorrected latency percentiles (ms)."""
    from meshlab.envs.factory import build_env
    from meshlab.envs.local.state import LabState
    from meshlab.experiment.lifecycle import RunOptions, experiment
    from meshlab.journal import RunJournal

    try:
        state = LabState.load(lab)
        if state is None or state.status != "up":
            raise LabError(f"lab {lab!r} is not up: run 'meshlab up --lab {lab}' first")
        env = build_env("local", state.manifests, lab)  # as it was brought up
        journal = RunJournal(reports, f"meshlab load {url}")
        with experiment(env, journal, RunOptions(client=from_pod)) as run:
            closed = mode == "closed-loop"
            result = run.load("cli", url, users=connections if closed else 1,
                              rate_per_s=rate_per_s, duration_s=duration_s, mode=mode,
                              processes=processes, connections=None if closed else connections,
                              distribution=distribution)
        path = journal.dir / "report.html"
    except MeshlabError as exc:
        _fail(exc)
    out = {"mode": result.mode, "requests": result.requests, "errors": result.errors,
           "tps": round(result.tps, 1),
           "latency_ms": {k: None if v is None else round(v / 1000, 3)
                          for k, v in result.latency_us.items()}}
    uncorrected = getattr(result, "latency_uncorrected_us", None)
    if uncorrected:
        out["latency_uncorrected_ms"] = {k: None if v is None else round(v / 1000, 3)
                                         for k, v in uncorrected.items()}
    for key in ("late", "skipped"):
        if getattr(result, key, None) is not None:
            out[key] = getattr(result, key)
    typer.echo(json.dumps(out, indent=1))
    typer.echo(f"report: {path.resolve()}")


@app.command()
def report(run_dir: Path) -> None:
    """Re-render report.html from a run folder's results.json (also for a partial run)."""
    from meshlab.report.index import render_index
    from meshlab.report.render import render_report

    try:
        path = render_report(run_dir)
        render_index(run_dir.parent)
    except MeshlabError as exc:
        _fail(exc)
    typer.echo(str(path))


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="print the findings as JSON")
           ) -> None:
    """Check this machine for every kernel feature and tool the local lab and its faults need;
    say what is missing and how to fix it. Exit 1 when something required is missing."""
    from meshlab.envs.local.doctor import diagnose

    try:
        findings = diagnose()
    except MeshlabError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps([vars(f) for f in findings], indent=1))
    for f in findings if not as_json else []:
        mark = "ok  " if f.ok else "FAIL" if f.required else "warn"
        typer.echo(f"{mark} {f.name}: {f.detail}" + (f" — fix: {f.fix}" if f.fix else ""))
    if any(f.required and not f.ok for f in findings):
        raise typer.Exit(1)


def main() -> None:
    """Entry point for ``python -m meshlab``."""
    try:
        app()
    except LabError as exc:
        typer.echo(f"meshlab: error: {exc}", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
