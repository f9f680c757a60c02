"""A kept-alive connection to one sidecar's admin port, for collectors that poll it every tick.

:meth:`Env.sidecar_admin` runs ``curl`` in the pod (``ip netns exec`` locally, ``kubectl exec``
on a cluster): one process and one fresh TCP connection per call. Polled every second that costs
~11 ms of CPU per call on the lab machine, and each call leaves a TIME-WAIT socket and a
conntrack entry in the pod's namespace — in the very socket and conntrack series the sampler
records. When the pod's shell names a local network namespace (``NetnsShell.netns``), this
client instead opens one HTTP/1.1 connection from inside that namespace
(:func:`meshlab.envs.local.netns_socket.netns_connect`) and reuses it; a broken connection is
re-opened once per call. Elsewhere it falls back to ``env.sidecar_admin``.
"""

from __future__ import annotations

import http.client

from meshlab.envs.base import Env
from meshlab.envs.local.netns_socket import netns_connect
from meshlab.errors import LabError

ADMIN_HOST = "127.0.0.1"
ADMIN_PORT = 15000
TIMEOUT_S = 5.0


class _NetnsConnection(http.client.HTTPConnection):
    """``HTTPConnection`` whose socket is created inside a network namespace."""

    def __init__(self, netns: str, timeout_s: float) -> None:
        super().__init__(ADMIN_HOST, ADMIN_PORT, timeout=timeout_s)
        self.netns = netns

    def connect(self) -> None:
        self.sock = netns_connect(self.netns, ADMIN_HOST, ADMIN_PORT, self.timeout)


class AdminClient:
    """GETs on one pod's sidecar admin API, over a kept-alive connection when possible.

    Args:
        env: the env.
        pod: the meshed pod.
        timeout_s: connect and read timeout of the kept-alive connection.
    """

    def __init__(self, env: Env, pod: str, timeout_s: float = TIMEOUT_S) -> None:
        self.env = env
        self.pod = pod
        shell = env.pod_shell(pod)
        netns = getattr(shell, "netns", None)
        self._conn = _NetnsConnection(netns, timeout_s) if isinstance(netns, str) else None

    def __repr__(self) -> str:
        return f"AdminClient(pod={self.pod!r}, kept_alive={self._conn is not None})"

    def get(self, path: str) -> str:
        """The body of ``GET <path>`` (any status, as ``curl -sS`` returns it).

        Raises:
            LabError: the admin endpoint did not answer.
        """
        if self._conn is None:
            return self.env.sidecar_admin(self.pod, path)
        try:
            return self._get(path)
        except (TimeoutError, LabError) as exc:
            self._conn.close()
            raise LabError(f"sidecar admin {path} on {self.pod} failed: {exc}") from exc
        except (OSError, http.client.HTTPException):  # e.g. a kept-alive connection went stale
            self._conn.close()
        try:
            return self._get(path)
        except (OSError, http.client.HTTPException, LabError) as exc:
            self._conn.close()
            raise LabError(f"sidecar admin {path} on {self.pod} failed: {exc}") from exc

    def _get(self, path: str) -> str:
        assert self._conn is not None
        self._conn.request("GET", path)
        with self._conn.getresponse() as resp:
            return resp.read().decode(errors="replace")

    def close(self) -> None:
        """Close the kept-alive connection (the next call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
