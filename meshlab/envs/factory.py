"""The one place envs are built: :func:`build_env` from a front end's options, and
:func:`env_from_spec` from a saved spec (the fault deadman, ``meshlab down`` after a dead
runner, the chaostoolkit session). Manifest sets are :mod:`meshlab.envs.manifest_sets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from meshlab.envs.base import Env
from meshlab.errors import ConfigError

#: The envs this version builds.
ENVS = ("local", "kube")


def build_env(which: str, manifests: Sequence[Path | str], lab: str, *,
              kube_config: Path | str | None = None, dry_run: bool = False,
              out: IO[str] | None = None) -> Env:
    """Build (not bring up) an env.

    Args:
        which: ``"local"`` (network-namespace lab) or ``"kube"`` (a cluster with Istio).
        manifests: the manifest set, base folder first (:func:`manifest_sets.manifest_set`).
        lab: the lab name (local: netns ``ml-<lab>-…``; kube: labels).
        kube_config: kube env settings YAML (docs/KUBE.md); None: the defaults.
        dry_run: kube env: print every manifest and command instead of sending it.
        out: kube dry run: where to print (default stdout).

    Raises:
        ConfigError: an unknown env, ``dry_run``/``kube_config`` for the local env, bad kube
            settings or invalid manifests (file and field named); nothing is built.
    """
    folders = [Path(m) for m in manifests]
    if which == "kube":
        from meshlab.envs.kube.env import KubeEnv
        from meshlab.envs.kube.settings import load_settings

        return KubeEnv(folders, load_settings(kube_config, dry_run=dry_run), lab=lab, out=out)
    if which != "local":
        raise ConfigError(f"env: must be one of {', '.join(ENVS)}, got {which!r}")
    if dry_run or kube_config:
        raise ConfigError("dry run / kube settings: only for the kube env (the local lab has "
                          "no dry run)")
    from meshlab.envs.local.lab import LocalEnv

    return LocalEnv(folders, lab=lab)


def env_from_spec(spec: dict[str, Any]) -> Env:
    """Rebuild an env object from its ``spec()`` output (no lab is brought up, nothing sent).

    Args:
        spec: ``{"env": "local", "lab": str, "manifests": [folder, ...]}``, or for the kube
            env the same plus ``"settings"`` (:meth:`KubeSettings.to_dict`).

    Raises:
        ConfigError: an env this version cannot rebuild, or a malformed spec.
    """
    if spec.get("env") not in ENVS:
        raise ConfigError(f"env spec: cannot rebuild env {spec.get('env')!r} here")
    try:
        folders = [Path(p) for p in spec["manifests"]]
        if spec["env"] == "kube":
            from meshlab.envs.kube.env import KubeEnv
            from meshlab.envs.kube.settings import settings_from_dict

            return KubeEnv(folders, settings_from_dict(spec["settings"]), lab=str(spec["lab"]),
                           cluster_manifests=spec.get("cluster_manifests"))
        return build_env("local", folders, str(spec["lab"]))
    except KeyError as exc:
        raise ConfigError(f"env spec: missing field {exc}") from exc
