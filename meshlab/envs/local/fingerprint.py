"""What a fault could leave behind in a local lab, as a comparable snapshot.

:func:`fingerprint` records, for every namespace of the lab: its iptables rules
(``iptables-save`` without counters), its ``net.*`` sysctls, and its processes (command lines,
not PIDs, so a node that was powered off and on again compares equal), plus the lab's
namespace list, its fault-ledger entries, each container cgroup's freezer state and CPU
limit, and what its control plane holds (VirtualService faults pushed to the sidecars, pods out
of the endpoints, the cluster DNS config and any DNS fault front). The pytest plugin takes one
when a lab comes up
and compares after every run (:func:`diff`): a leftover rule, sysctl, namespace, process or
active fault fails that test.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Any

from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.netns import NetnsShell, netns_pids
from meshlab.envs.local.state import LabState, leftovers
from meshlab.errors import LabError

# sysctls that change by themselves (counters, per-boot secrets) are not state a fault sets
_VOLATILE_SYSCTLS = re.compile(r"nf_conntrack_count$|stable_secret$|\.base_reachable_time|"
                               r"^net\.netfilter\.nf_log\.")
_COUNTERS = re.compile(r"\[\d+:\d+\]")
# a table that a rule was added to and removed from again still lists its built-in chains
_NOISE = re.compile(r"^(\*|COMMIT|:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT )")


def _iptables(shell: NetnsShell) -> list[str]:
    res = shell.run(["iptables-save"], check=False, timeout_s=20)
    return [_COUNTERS.sub("[0:0]", line) for line in res.stdout.splitlines()
            if line and not line.startswith("#") and not _NOISE.match(line)]


def _sysctls(shell: NetnsShell) -> dict[str, str]:
    res = shell.run(["sysctl", "-a", "-r", r"^net\."], check=False, timeout_s=20)
    out = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and not _VOLATILE_SYSCTLS.search(key):
            out[key] = value
    return out


def _processes(netns: str) -> dict[str, int]:
    cmds: Counter[str] = Counter()
    for pid in netns_pids(netns):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # exited since it was listed
        if raw:
            cmds[" ".join(raw.decode(errors="replace").split("\0")).strip()] += 1
    return dict(cmds)


def _cgroups(lab: str) -> dict[str, dict[str, Any]]:
    """``{"<pod>/<container>": {"frozen": bool, "cpu_limit_m": int | None}}`` of the lab's
    container cgroups that exist."""
    state = LabState.load(lab)
    try:
        groups = Cgroups()
    except LabError:
        return {}
    out = {}
    for key in sorted(state.pids if state else {}):
        rel = Cgroups.rel(lab, *key.split("/", 1))
        try:
            out[key] = {"frozen": groups.frozen(rel), "cpu_limit_m": groups.cpu_limit(rel)}
        except (OSError, ValueError):
            continue  # no cgroup (made before cgroups, or gone with its node)
    return out


def _control_plane(lab: str) -> dict[str, Any]:
    """What the lab's istiod, kubelet and kube-dns hold: ``{"route_faults": [keys],
    "not_ready": [pods], "deleting": [pods], "dns_config": sha256 of dnsmasq's config,
    "dns_fault_front": bool}``."""
    state = LabState.load(lab)
    if state is None:
        return {}
    conf = Path(state.dns["config"]) if state.dns.get("config") else None
    digest = hashlib.sha256(conf.read_bytes()).hexdigest() if conf and conf.exists() else ""
    return {"route_faults": sorted(state.route_faults), "not_ready": sorted(state.unready),
            "deleting": sorted(state.deleting), "dns_config": digest,
            "dns_fault_front": bool(state.dns.get("front_pid"))}


def fingerprint(lab: str, ledger: list[str]) -> dict[str, Any]:
    """Snapshot of lab ``lab``: ``{"netns": [...], "faults": [...], "per_netns": {ns: {
    "iptables": [lines], "sysctls": {key: value}, "processes": {cmdline: count}}},
    "cgroups": {"<pod>/<container>": {"frozen", "cpu_limit_m"}}, "control_plane": {...}}``
    (:func:`_control_plane`: pushed VirtualService faults, pods out of the endpoints, the
    cluster DNS config and fault front)."""
    per: dict[str, Any] = {}
    names = leftovers(lab)
    for ns in names:
        shell = NetnsShell(ns)
        per[ns] = {"iptables": _iptables(shell), "sysctls": _sysctls(shell),
                   "processes": _processes(ns)}
    return {"netns": names, "faults": sorted(ledger), "per_netns": per,
            "cgroups": _cgroups(lab), "control_plane": _control_plane(lab)}


def diff(before: dict[str, Any], after: dict[str, Any], limit: int = 20) -> list[str]:
    """Human-readable differences between two fingerprints (empty: nothing left behind)."""
    out: list[str] = []
    if before["netns"] != after["netns"]:
        out.append(f"namespaces: {before['netns']} -> {after['netns']}")
    if after["faults"]:
        out.append(f"faults still in the ledger: {after['faults']}")
    b_cp, a_cp = before.get("control_plane", {}), after.get("control_plane", {})
    out += [f"control plane {key}: {b_cp.get(key)} -> {a_cp.get(key)}"
            for key in sorted(set(b_cp) | set(a_cp)) if b_cp.get(key) != a_cp.get(key)]
    for key, b_cg in before.get("cgroups", {}).items():
        a_cg = after.get("cgroups", {}).get(key)
        if a_cg is not None and a_cg != b_cg:
            out.append(f"cgroup {key}: {b_cg} -> {a_cg}")
    for ns, b in before["per_netns"].items():
        a = after["per_netns"].get(ns)
        if a is None:
            continue
        added = [r for r in a["iptables"] if r not in b["iptables"]]
        gone = [r for r in b["iptables"] if r not in a["iptables"]]
        out += [f"{ns}: iptables rule left: {r}" for r in added]
        out += [f"{ns}: iptables rule missing: {r}" for r in gone]
        for key in sorted(set(b["sysctls"]) | set(a["sysctls"])):
            if b["sysctls"].get(key) != a["sysctls"].get(key):
                out.append(f"{ns}: sysctl {key}: {b['sysctls'].get(key)} -> "
                           f"{a['sysctls'].get(key)}")
        if a["processes"] != b["processes"]:
            extra = Counter(a["processes"]) - Counter(b["processes"])
            missing = Counter(b["processes"]) - Counter(a["processes"])
            out += [f"{ns}: process left: {c}" for c in extra]
            out += [f"{ns}: process gone: {c}" for c in missing]
    return out[:limit] + ([f"… {len(out) - limit} more"] if len(out) > limit else [])
