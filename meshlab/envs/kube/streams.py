"""Exec and port-forward streams of the cluster facade (:class:`KubeStreams`, a mixin of
:class:`meshlab.envs.kube.api.KubeApi`), and the exit status an exec ends with.

Exec runs over the ``v5.channel.k8s.io``/``v4.channel.k8s.io`` WebSocket protocols (the
client offers v5 first; a cluster before 1.30 chooses v4): channel 0 stdin, 1 stdout, 2
stderr, 3 the exit ``Status``. Output is read as bytes and decoded once whole: the kubelet
cuts frames anywhere, also inside a UTF-8 character. An exec the API server refuses (RBAC,
no such pod or container) is answered before the upgrade, with an HTTP error and a
``Status`` body, and raised like any other refused call. Port-forward is the way ``istioctl``
reaches Envoy's admin port (istio ``pkg/kube/client.go`` ``EnvoyDo`` →
``portForwardRequest(..., 15000)``).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes.stream import portforward, stream
from websocket import WebSocketException

from meshlab.envs.base import CommandResult
from meshlab.envs.kube.facade import kubectl_exec_argv
from meshlab.errors import LabError


class KubeStreams:
    """Exec and port-forward (a mixin of :class:`~meshlab.envs.kube.api.KubeApi`, which
    provides ``core`` and ``_call``)."""

    core: Any
    _call: Callable[..., Any]

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], *,
             timeout_s: float, input_text: str | None = None) -> CommandResult:
        """Run ``argv`` in a container to completion (no TTY).

        Stdin is closed after ``input_text`` only on the ``v5.channel.k8s.io`` protocol
        (Kubernetes ≥ 1.30); on v4 a command that reads stdin to EOF runs until ``timeout_s``.

        Raises:
            LabError: the exec could not start (e.g. the program is not in the image), or
                ``timeout_s`` passed.
        """
        shown = kubectl_exec_argv(namespace, pod, container, argv)
        what = " ".join(shown)
        start = time.monotonic()
        ws = self._open_exec(what, namespace, pod, container, argv, input_text is not None)
        try:
            if input_text is not None:
                ws.write_stdin(input_text.encode())
                ws.close_channel(0)
            try:
                ws.run_forever(timeout=timeout_s)
            except WebSocketException:
                ws._connected = False  # the server dropped the connection: what came is all
            if ws.is_open():
                raise LabError(f"command timed out after {timeout_s:g} s: {what}")
            out, err, status = (ws.read_channel(c) for c in (1, 2, 3))
        finally:
            ws.close()
        return CommandResult(argv=shown, returncode=exit_code(status, what),
                             stdout=out.decode(errors="replace"),
                             stderr=err.decode(errors="replace"),
                             duration_s=time.monotonic() - start)

    def exec_stream(self, namespace: str, pod: str, container: str, argv: list[str]) -> Any:
        """Start ``argv`` in a container (no stdin, no TTY) and return the open exec stream
        (``kubernetes.stream.ws_client.WSClient`` in binary mode: channels 1 stdout, 2 stderr,
        3 the exit ``Status``, as bytes), for a background command
        (:class:`meshlab.envs.kube.process.ExecProcess`).

        Raises:
            LabError: the exec could not start.
        """
        what = " ".join(kubectl_exec_argv(namespace, pod, container, argv))
        return self._open_exec(what, namespace, pod, container, argv, False)

    def _open_exec(self, what: str, namespace: str, pod: str, container: str, argv: list[str],
                   stdin: bool) -> Any:
        return self._call(what, lambda: stream(
            self.core.connect_get_namespaced_pod_exec, pod, namespace, command=list(argv),
            container=container, stdin=stdin, stdout=True, stderr=True, tty=False,
            binary=True, _preload_content=False))

    def port_forward_http(self, namespace: str, pod: str, port: int, method: str, path: str, *,
                          timeout_s: float) -> tuple[int, str]:
        """One HTTP request to ``127.0.0.1:<port>`` inside the pod through a port-forward.

        Returns:
            ``(status, body)``.

        Raises:
            LabError: the port-forward failed or nothing answered on the port.
        """
        what = f"port-forward {namespace}/{pod}:{port} {method} {path}"
        pf = self._call(what, lambda: portforward(
            self.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            sock = pf.socket(port)
            sock.settimeout(timeout_s)
            conn.sock = sock
            conn.request(method, path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            raise LabError(f"{what}: {exc!r}; port-forward error: {pf.error(port)}") from exc
        finally:
            conn.close()
            pf.close()


def exit_code(status_text: str | bytes, what: str) -> int:
    """The exit code from an exec's ``Status`` (channel 3): 0 for Success, the ``ExitCode``
    cause of a NonZeroExitCode.

    Raises:
        LabError: the exec failed without an exit code (an InternalError: program not found,
            container gone; plain text: the pre-v4 protocols), or ended without a status.
    """
    if isinstance(status_text, bytes):
        status_text = status_text.decode(errors="replace")
    if not status_text.strip():
        raise LabError(f"{what}: the exec ended without a status (connection lost)")
    try:
        status = json.loads(status_text)
    except ValueError:
        raise LabError(f"{what}: exec failed: {status_text.strip()[:300]}") from None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    raise LabError(f"{what}: {status.get('reason') or 'exec failed'}: {status.get('message')}")
