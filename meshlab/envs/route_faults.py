"""VirtualService HTTP faults as the sidecars hold them, for both envs: finding a route's fault
filter config in an Envoy ``/config_dump`` (the ``envoy.filters.http.fault`` entry of the
route's ``typed_per_filter_config``, where istiod puts a VirtualService ``fault``) and waiting
until every sidecar has (or no longer has) it after a push.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from meshlab.errors import LabError
from meshlab.polling import PollTimeout, wait_until

PUSH_TIMEOUT_S = 15.0
"""Seconds a sidecar may take to apply a pushed route change."""


def route_fault_in_dump(dump: str, fqdn: str, port: int | None) -> dict[str, Any] | None:
    """The fault filter config of ``fqdn``'s route(s) in a ``/config_dump`` body (None: none)."""
    for config in json.loads(dump).get("configs", []):
        for dyn in config.get("dynamic_route_configs", []):
            for vhost in dyn.get("route_config", {}).get("virtual_hosts", []):
                host, _, vport = vhost.get("name", "").rpartition(":")
                if host == fqdn and (port is None or vport == str(port)):
                    for route in vhost.get("routes", []):
                        fault = route.get("typed_per_filter_config", {}).get(
                            "envoy.filters.http.fault")
                        if fault:
                            return fault
    return None


def wait_applied(sidecar_admin: Callable[..., str], pods: list[str], fqdn: str,
                 port: int | None, present: bool, timeout_s: float = PUSH_TIMEOUT_S) -> None:
    """Poll each pod's ``/config_dump`` until ``fqdn``'s route has a fault (``present``) or
    none.

    Raises:
        LabError: a sidecar did not apply the push within ``timeout_s``.
    """
    for pod in pods:
        try:
            wait_until(lambda pod=pod: route_fault_in_dump(sidecar_admin(pod, "/config_dump"),
                                                           fqdn, port) is not None,
                       lambda has: has == present, timeout_s=timeout_s,
                       what=f"{pod} applied the push")
        except PollTimeout as exc:
            raise LabError(f"istio push: {exc}") from exc
