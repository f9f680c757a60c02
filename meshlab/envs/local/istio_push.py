"""The local "istiod" pushing route changes to running sidecars, as istiod's xDS push does: a
VirtualService fault (``fault.abort`` / ``fault.delay``) set or cleared on a host, with no
sidecar restart and no connection dropped.

Route faults live in the lab state (``route_faults``, keyed ``<host FQDN>|<port or *>``), on top
of the manifests' VirtualServices: a host that has a VirtualService gets the fault on its routes
(the rest of the route — timeout, retries — is kept); a host that has none gets one route with
only the fault. Every running meshed pod's ``sidecar.json`` is rewritten atomically (write,
rename); each sidecar watches its file (:mod:`meshlab.proxy.config.watch`) and applies it to
the next request on every connection; the caller then waits until every sidecar's
``/config_dump`` shows the change (:func:`meshlab.envs.route_faults.wait_applied`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from meshlab.envs.local import istiod
from meshlab.envs.local.plan import LabPlan, PodPlan
from meshlab.envs.local.state import LabState
from meshlab.model import HttpRouteSpec, VirtualService


def fault_key(fqdn: str, port: int | None) -> str:
    """The state key of a route fault: ``<fqdn>|<port or *>``."""
    return f"{fqdn}|{port if port is not None else '*'}"


def virtual_services(plan: LabPlan, faults: dict[str, dict[str, Any]]) -> list[VirtualService]:
    """The manifests' VirtualServices with ``faults`` (state ``route_faults``) applied."""
    out = list(plan.topology.virtual_services)
    for key, f in sorted(faults.items()):
        fqdn, _, port_text = key.partition("|")
        port = None if port_text == "*" else int(port_text)
        fields = {"abort_status": f.get("abort_status"), "abort_percent": f.get("abort_pct", 100.0),
                  "delay_s": f.get("delay_s"), "delay_percent": f.get("delay_pct", 100.0)}
        hit = False
        for i, vs in enumerate(out):
            routes = tuple(replace(r, **fields) if r.host == fqdn and port in (None, r.port)
                           else r for r in vs.http)
            if routes != vs.http:
                out[i], hit = replace(vs, http=routes), True
        if not hit:
            out.append(VirtualService(name=f"meshlab-http-fault-{fqdn.split('.')[0]}",
                                      namespace=fqdn.split(".")[1], hosts=(fqdn,),
                                      http=(HttpRouteSpec(host=fqdn, port=port, **fields),)))
    return out


def _meshed(plan: LabPlan, state: LabState) -> list[PodPlan]:
    running = {key.split("/", 1)[0] for key in state.pids}
    return [pp for pp in plan.pods.values() if pp.pod.meshed and pp.name in running]


def pushed_plan(plan: LabPlan, state: LabState) -> LabPlan:
    """``plan`` with the state's route faults in its VirtualServices and its not-ready pods
    out of the endpoints (what a sidecar started now — at ``up``, a restart or a node's
    power-on — must get too)."""
    plan = replace(plan, unready=frozenset(state.unready))
    if not state.route_faults:
        return plan
    return replace(plan, topology=replace(
        plan.topology, virtual_services=virtual_services(plan, state.route_faults)))


def write_configs(plan: LabPlan, state: LabState, pod_dir: Any) -> list[str]:
    """Rewrite every running meshed pod's ``sidecar.json`` for the state's route faults;
    returns the pods written."""
    pushed = pushed_plan(plan, state)
    written = []
    for pp in _meshed(plan, state):
        folder = pod_dir(state, pp.name)
        path, tmp = folder / "sidecar.json", folder / "sidecar.json.push"
        tmp.write_text(istiod.dump(istiod.sidecar_config(pushed, pp,
                                                         str(folder / "access.log"))))
        os.chmod(tmp, 0o644)
        tmp.replace(path)
        written.append(pp.name)
    return written
