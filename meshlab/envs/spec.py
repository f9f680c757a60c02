"""How to rebuild an env object from a saved spec (used by the fault deadman and
``meshlab down`` after a dead runner). Manifest sets are :mod:`meshlab.envs.manifest_sets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshlab.errors import ConfigError


def env_from_spec(spec: dict[str, Any]) -> Any:
    """Rebuild an env object from its ``spec()`` output (no lab is brought up, nothing sent).

    Args:
        spec: ``{"env": "local", "lab": str, "manifests": [folder, ...]}``, or for the kube
            env the same plus ``"settings"`` (:meth:`KubeSettings.to_dict`).

    Raises:
        ConfigError: an env this version cannot rebuild, or a malformed spec.
    """
    if spec.get("env") not in ("local", "kube"):
        raise ConfigError(f"env spec: cannot rebuild env {spec.get('env')!r} here")
    try:
        folders = [Path(p) for p in spec["manifests"]]
        if spec["env"] == "kube":
            from meshlab.envs.kube.env import KubeEnv
            from meshlab.envs.kube.settings import settings_from_dict

            return KubeEnv(folders, settings_from_dict(spec["settings"]), lab=str(spec["lab"]),
                           cluster_manifests=spec.get("cluster_manifests"))
        from meshlab.envs.local.lab import LocalEnv

        return LocalEnv(folders, lab=str(spec["lab"]))
    except KeyError as exc:
        raise ConfigError(f"env spec: missing field {exc}") from exc
