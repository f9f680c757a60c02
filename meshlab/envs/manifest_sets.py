"""Manifest sets: which folders a lab is built from (a base folder plus overlays).

Overlays live in ``manifests/overlays/<name>/`` and are applied over the base folder in order,
like ``kubectl apply -f base -f overlay`` (an object with the same kind/namespace/name is
replaced). A suite asks for one with ``@pytest.mark.meshlab_lab(overlays=["ha-l2"])``. A leaf
module: every env and front end may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
