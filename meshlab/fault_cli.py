"""``meshlab fault``: inject a fault by hand, see what is active, revert it.

::

    meshlab fault list
    meshlab fault inject network-delay --target fortio-server-l2-0 --delay-ms 50 --jitter-ms 5
    meshlab fault inject network-partition --side-a fortio-server-0 --side-b fortio-server-l2-0
    meshlab fault status
    meshlab fault revert 142501-network-partition-3fa2c1   (or --all)

``inject`` prints the fault's ledger id and returns at once; the fault stays until its deadman
reverts it after ``--duration-s`` (default 300 s), or until ``revert``, ``meshlab down`` or the
next ``up`` (:mod:`meshlab.faults.manual`). A fault's options are its parameters in kebab-case
(:mod:`meshlab.faults.catalog`; ``meshlab fault list`` shows them with units and defaults).
Bad input exits 2 with one line naming the parameter, before the lab is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from meshlab.envs.base import Env
from meshlab.errors import ConfigError, MeshlabError

fault_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Inject, list and revert faults by hand (same ledger and deadman "
                             "as the suites).")

LAB = typer.Option("lab", "--lab", help="lab name (its netns are ml-<lab>-…)")
ENV = typer.Option("local", "--env", help="local (the running netns lab) or kube")
KUBE_CONFIG = typer.Option(None, "--kube-config", help="kube env settings YAML (docs/KUBE.md)")
DRY_RUN = typer.Option(False, "--dry-run", help="kube env: print every command, send nothing")


def _fail(exc: MeshlabError) -> None:
    typer.echo(f"meshlab: error: {exc}", err=True)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 3)


def _lab_env(which: str, lab: str, kube_config: Path | None, dry_run: bool) -> Env:
    """The env of the running lab: a local lab as it was brought up (its state), or the
    cluster's lab namespace.

    Raises:
        ConfigError: the local lab is not up, or bad kube settings.
    """
    from meshlab.envs.factory import build_env
    from meshlab.envs.manifest_sets import manifest_set

    if which == "local":
        from meshlab.envs.local.state import LabState

        state = LabState.load(lab)
        if state is None or state.status != "up":
            raise ConfigError(f"--lab: lab {lab!r} is not up (run 'meshlab up --lab {lab}')")
        return build_env("local", state.manifests, lab)
    return build_env(which, manifest_set(None, ()), lab, kube_config=kube_config,
                     dry_run=dry_run)


@fault_app.command("list")
def list_faults() -> None:
    """Every fault by registry key, with its parameters, units and defaults."""
    from meshlab.faults.catalog import describe
    from meshlab.faults.registry import FAULTS

    typer.echo("\n\n".join(describe(kind) for kind in sorted(FAULTS)))


@fault_app.command(context_settings={"allow_extra_args": True,
                                     "ignore_unknown_options": True})
def inject(ctx: typer.Context,
           kind: str = typer.Argument(..., help="the fault's registry key (meshlab fault list)"),
           duration_s: float = typer.Option(300.0, "--duration-s", help="seconds until the "
                                            "deadman reverts it"),
           lab: str = LAB, env: str = ENV, kube_config: Path | None = KUBE_CONFIG,
           dry_run: bool = DRY_RUN) -> None:
    """Inject KIND with its parameters as options (e.g. --target fortio-server-l2-0); print
    its id and return; it stays active until --duration-s passes or it is reverted."""
    from meshlab.faults import manual
    from meshlab.faults.catalog import parse_options

    try:
        params = parse_options(kind, list(ctx.args))
        if not duration_s > 0:
            raise ConfigError(f"--duration-s: must be > 0 seconds, got {duration_s:g}")
        target = _lab_env(env, lab, kube_config, dry_run)
        fault_id, output = manual.inject(target, kind, params, duration_s)
    except MeshlabError as exc:
        _fail(exc)
    typer.echo(fault_id)
    typer.echo(f"{kind}: {output} (reverted in {duration_s:g} s, or by 'meshlab fault revert "
               f"{fault_id}')", err=True)


@fault_app.command()
def status(lab: str = LAB, env: str = ENV,
           as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The lab's faults in the ledger: id, kind, status, age and seconds until the deadman
    reverts it."""
    from dataclasses import asdict

    from meshlab.faults import manual

    rows = manual.status(env, lab)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
        return
    if not rows:
        typer.echo(f"no faults in lab {lab!r}")
        return
    typer.echo(f"{'ID':36} {'FAULT':20} {'STATUS':9} {'AGE s':>7} {'LEFT s':>7}  PARAMS")
    for r in rows:
        state = r.status if r.reverted_by is None else f"reverted by {r.reverted_by}"
        typer.echo(f"{r.id:36} {r.fault:20} {state:9} {r.age_s:7.1f} {r.remaining_s:7.1f}  "
                   f"{json.dumps(r.params, sort_keys=True)}")


@fault_app.command()
def revert(fault_id: str | None = typer.Argument(None, help="the id 'inject' printed"),
           all_: bool = typer.Option(False, "--all", help="revert every fault of the lab"),
           lab: str = LAB, env: str = ENV, kube_config: Path | None = KUBE_CONFIG,
           dry_run: bool = DRY_RUN) -> None:
    """Revert one fault by id, or --all of the lab's; a fault its deadman already reverted is
    cleared from the ledger."""
    from meshlab.faults import manual

    try:
        if (fault_id is None) == (not all_):
            raise ConfigError("fault id: give one fault id or --all")
        for line in manual.revert(env, lab, None if all_ else fault_id,
                                  _env_or_none(env, lab, kube_config, dry_run)):
            typer.echo(line)
    except MeshlabError as exc:
        _fail(exc)


def _env_or_none(which: str, lab: str, kube_config: Path | None, dry_run: bool) -> Env | None:
    try:  # a lab that is gone still has its faults cleared (each env rebuilt from its spec)
        return _lab_env(which, lab, kube_config, dry_run)
    except ConfigError:
        return None
