"""Which process a container image becomes in the local lab.

The local env runs no container runtime: known images map to meshlab's own programs with the
manifest's args, so the same YAML works on a cluster (real images) and locally.

| image (any registry/tag) | local process |
|---|---|
| ``fortio/fortio`` | ``python -m meshlab.apps.fortio <args>`` (fortio-compatible server) |
| ``nicolaka/netshoot`` | none: a shell pod; commands run in its netns on demand |
| ``meshlab/tcp-echo`` | ``python -m meshlab.apps.tcp_echo <args>`` |
"""

from __future__ import annotations

import sys

from meshlab.errors import ManifestError
from meshlab.model import Container, Workload

SUPPORTED_IMAGES = ("fortio/fortio", "nicolaka/netshoot", "meshlab/tcp-echo")


def image_repo(image: str) -> str:
    """``docker.io/fortio/fortio:1.60`` → ``fortio/fortio`` (registry and tag/digest dropped)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"library/{parts[0]}"


def local_command(workload: Workload, index: int, container: Container,
                  python: str = sys.executable) -> list[str] | None:
    """The argv that plays ``container`` in the local lab, or None for a shell-only pod.

    Raises:
        ManifestError: the image has no local equivalent (names file, field and the supported list).
    """
    repo = image_repo(container.image)
    if repo == "fortio/fortio":
        return [python, "-m", "meshlab.apps.fortio", *(container.args or ("server",))]
    if repo == "meshlab/tcp-echo":
        return [python, "-m", "meshlab.apps.tcp_echo", *container.args]
    if repo == "nicolaka/netshoot":
        return None
    raise ManifestError(workload.source,
                        f"{workload.kind}/{workload.name}.spec.template.spec.containers[{index}].image",
                        f"image {container.image!r} has no local-env equivalent "
                        f"(supported: {', '.join(SUPPORTED_IMAGES)})")
