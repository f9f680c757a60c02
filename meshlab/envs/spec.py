"""Which lab an env runs: a manifests set (base folder + overlays) and how to rebuild an env
object from a saved spec (used by the fault deadman and ``meshlab down`` after a dead runner).

Overlays live in ``manifests/overlays/<name>/`` and are applied over the base folder in order,
like ``kubectl apply -f base -f overlay`` (an object with the same kind/namespace/name is
replaced). A suite asks for one with ``@pytest.mark.meshlab_lab(overlays=["ha-l2"])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshlab.errors import ConfigError

MANIFESTS_ROOT = Path(__file__).resolve().parents[2] / "manifests"
DEFAULT_MANIFESTS = MANIFESTS_ROOT / "fortio-layered"
OVERLAYS_ROOT = MANIFESTS_ROOT / "overlays"


def overlay_path(name: str | Path) -> Path:
    """An overlay folder by name (``ha-l2`` → ``manifests/overlays/ha-l2``) or by path.

    Raises:
        ConfigError: no such folder (the message lists the known overlays).
    """
    path = Path(name)
    if path.is_dir():
        return path.resolve()
    candidate = OVERLAYS_ROOT / str(name)
    if candidate.is_dir():
        return candidate
    known = sorted(p.name for p in OVERLAYS_ROOT.iterdir() if p.is_dir()) \
        if OVERLAYS_ROOT.is_dir() else []
    raise ConfigError(f"overlay {str(name)!r}: no folder {candidate} "
                      f"(known overlays: {', '.join(known) or 'none'})")


def manifest_set(base: Path | str | None = None,
                 overlays: Sequence[str | Path] = ()) -> tuple[Path, ...]:
    """The folders a lab is built from: ``base`` (default: the book's layered lab) then each
    overlay, resolved to absolute paths.

    Raises:
        ConfigError: an unknown overlay.
    """
    first = Path(base).resolve() if base else DEFAULT_MANIFESTS
    return (first, *(overlay_path(o) for o in overlays))


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
