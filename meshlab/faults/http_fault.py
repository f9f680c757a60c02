"""``http-fault``: a VirtualService ``fault`` on a host's routes, pushed live to the sidecars
as istiod does (Istio ``HTTPFaultInjection``; Chaos Mesh HTTPChaos plays the same role
outside the mesh).

``abort``: ``abort_pct`` % of requests to ``host`` are answered at once by the *calling*
sidecar with ``abort_http_status`` (response flag ``FI``); ``delay``: ``delay_pct`` % wait
``delay_ms`` first (``DI``). Istio programs the fault on the client side, so it shows at the
caller's outbound (here: L1's outbound to L2), and the destination never sees an aborted
request. The push changes no listener and restarts no sidecar: open keep-alive connections
stay up and get the fault at their next request; revert pushes the routes as they were
(local lab: :mod:`meshlab.envs.local.istio_push`; cluster: the VirtualService through the
API, :mod:`meshlab.envs.kube.route_faults`).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.envs.base import Env
from meshlab.envs.capabilities import RouteFaults
from meshlab.errors import ConfigError, Unsupported
from meshlab.faults.targets import capable, param_error

NAME = "http-fault"


def _pct(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise param_error(NAME, name, f"must be a number in (0, 100], got {value!r}")


@dataclass
class HttpFault:
    """Push an HTTP fault on the routes to ``host`` until revert.

    Args:
        host: the Service (name or FQDN) whose routes get the fault.
        abort_http_status: the status aborted requests get (200-599); None: no abort.
        abort_pct: percent of requests aborted, (0, 100].
        delay_ms: the delay before a delayed request goes on, in ms; None: no delay.
        delay_pct: percent of requests delayed, (0, 100].
        port: only the route of this Service port; None: every HTTP port.

    Raises:
        ConfigError: a bad parameter (the message names the field).
    """

    host: str
    abort_http_status: int | None = None
    abort_pct: float = 100.0
    delay_ms: float | None = None
    delay_pct: float = 100.0
    port: int | None = None
    name = NAME

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise param_error(NAME, "host", f"must be a Service name, got {self.host!r}")
        status = self.abort_http_status
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)
                                   or not 200 <= status <= 599):
            raise param_error(NAME, "abort_http_status", f"must be an HTTP status 200-599, "
                                                         f"got {status!r}")
        delay = self.delay_ms
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)
                                  or delay < 0):
            raise param_error(NAME, "delay_ms", f"must be a number >= 0, got {delay!r}")
        if status is None and delay is None:
            raise param_error(NAME, "abort_http_status", "give an abort status or a delay_ms "
                                                         "(neither is set)")
        _pct(self.abort_pct, "abort_pct")
        _pct(self.delay_pct, "delay_pct")
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(
                self.port, int) or not 0 < self.port < 65536):
            raise param_error(NAME, "port", f"must be a port in 1..65535, got {self.port!r}")

    @staticmethod
    def _env(env: Env) -> RouteFaults:
        return capable(env, RouteFaults, NAME, "cannot push route faults (needs an istiod: "
                                               "the local lab's, or a cluster's)")

    def inject(self, env: Env) -> str:
        """Push the fault and return once every sidecar has it.

        Raises:
            ConfigError: no such Service, or an env without live pushes. LabError: a sidecar
                did not apply it in time.
        """
        try:
            return self._env(env).set_route_fault(
                self.host, self.port, abort_status=self.abort_http_status,
                abort_pct=self.abort_pct,
                delay_s=None if self.delay_ms is None else self.delay_ms / 1000,
                delay_pct=self.delay_pct)
        except ConfigError as exc:  # named after the fault; a refusal stays Unsupported
            kind = Unsupported if isinstance(exc, Unsupported) else ConfigError
            raise kind(f"{NAME}: {exc}") if not str(exc).startswith(NAME) else exc from None

    def revert(self, env: Env) -> str:
        """Push the routes without the fault (idempotent)."""
        return self._env(env).clear_route_fault(self.host, self.port)
