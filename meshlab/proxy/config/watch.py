"""The sidecar's side of istiod's config push: ``sidecar.json`` is watched, and a changed file
that parses becomes the running config without a restart (Envoy's xDS update: routes,
policies and endpoints change, listeners stay bound, open connections stay up).

The local "istiod" (:mod:`meshlab.envs.local.istio_push`) rewrites the file atomically (write
and rename), so a reader sees the old file or the new one, never half of one. A new file that
does not parse is rejected and the last good config keeps serving, as Envoy does with a
rejected xDS update (``update_rejected``); the reason goes to stderr once per bad version.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshlab.errors import ConfigError
from meshlab.proxy.config.sidecar import SidecarConfig, load_config

#: How often the file is looked at (seconds); a push applies within about this long.
WATCH_INTERVAL_S = 0.5


class ConfigWatcher:
    """Tells when ``path`` holds a new, valid config.

    Args:
        path: the ``sidecar.json`` the sidecar was started with.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen = self._version()
        self.updates = 0
        self.rejected = 0

    def _version(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def poll(self) -> SidecarConfig | None:
        """The new config if the file changed since the last call and parses, else None."""
        version = self._version()
        if version is None or version == self._seen:
            return None
        self._seen = version
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            self.rejected += 1
            print(f"meshlab.proxy: config update rejected, keeping the last good one: {exc}",
                  file=sys.stderr)
            return None
        self.updates += 1
        return config


async def watch(path: str | Path, apply: Callable[[SidecarConfig], Awaitable[None]],
                interval_s: float = WATCH_INTERVAL_S) -> None:
    """Call ``apply(config)`` for every new valid version of ``path`` until cancelled."""
    watcher = ConfigWatcher(path)
    while True:
        await asyncio.sleep(interval_s)
        config = watcher.poll()
        if config is not None:
            await apply(config)
