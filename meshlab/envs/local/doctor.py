"""``meshlab doctor``: does this machine have every kernel feature and tool the local lab and its
faults need? Each check says what is missing and how to fix it.

The kernel checks act inside one throwaway network namespace (``ml-doctor-<pid>``, deleted
before returning): a veth pair, a bridge, iptables rules with the ``statistic`` match, the
``NFQUEUE`` target and ``REDIRECT``, conntrack, and the ``tbf``/``htb``/``netem`` qdiscs on its
loopback. Nothing is configured in the host's own namespace. ``br_netfilter`` is read from
``/proc/sys/net/bridge`` (stock Debian ships it as a module that nothing loads on its own;
``scripts/setup.sh`` loads it).

A **required** check failing means ``meshlab up`` or the suites fail; an **optional** one
names the fault or feature that degrades (e.g. no ``sch_netem``: ``network-delay`` uses its
userspace NFQUEUE agent instead).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from meshlab.envs.base import run_argv
from meshlab.envs.local.cgroups import Cgroups
from meshlab.envs.local.istio_iptables import PROXY_GID, PROXY_UID
from meshlab.errors import LabError

#: Present once ``br_netfilter`` is loaded (kube-proxy's NAT of bridged pod traffic needs it).
BRIDGE_NF_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
BRIDGE_NF_FIX = "modprobe br_netfilter (scripts/setup.sh does; Debian package kmod)"


@dataclass(frozen=True)
class Finding:
    """One check's outcome.

    Attributes:
        name: what was checked, e.g. ``"iptables statistic match"``.
        ok: whether it works here.
        required: whether the lab needs it (False: a fault or feature degrades).
        detail: what was found (a version, the error).
        fix: how to get it (empty when ``ok``).
    """

    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""


def bridge_netfilter_error(sysctl: Path | None = None) -> str | None:
    """The one-line reason ``meshlab up`` cannot build a lab without bridge netfilter, or None
    when ``sysctl`` (default :data:`BRIDGE_NF_SYSCTL`) exists."""
    sysctl = sysctl or BRIDGE_NF_SYSCTL
    if sysctl.exists():
        return None
    return (f"bridge netfilter is missing ({sysctl} does not exist): kube-proxy's NAT of "
            f"bridged pod traffic needs it; fix: {BRIDGE_NF_FIX}")


def _run(argv: list[str]) -> tuple[bool, str]:
    """``(exit status 0, last line of its output)``; a missing program is a failure."""
    try:
        res = run_argv(argv, check=False, timeout_s=15)
    except LabError as exc:
        return False, str(exc)
    lines = (res.stdout + res.stderr).strip().splitlines()
    return res.ok, lines[-1] if lines else ""


class _Probe:
    """The throwaway namespace and the checks run in it."""

    def __init__(self) -> None:
        self.ns = f"ml-doctor-{os.getpid()}"

    def __enter__(self) -> Self:
        ok, out = _run(["ip", "netns", "add", self.ns])
        if not ok:
            raise LabError(f"ip netns add {self.ns}: {out}")
        return self

    def __exit__(self, *exc: object) -> None:
        run_argv(["ip", "netns", "del", self.ns], check=False, timeout_s=15)

    def ns_run(self, *argv: str) -> tuple[bool, str]:
        return _run(["ip", "netns", "exec", self.ns, *argv])

    def check(self, name: str, argv: list[str], required: bool, fix: str) -> Finding:
        ok, out = self.ns_run(*argv)
        return Finding(name, ok, required, "works" if ok else out, "" if ok else fix)


def _kernel(probe: _Probe) -> list[Finding]:
    ipt = ["iptables", "-w", "5"]
    return [
        probe.check("veth pairs", ["ip", "link", "add", "dv0", "type", "veth", "peer", "name",
                                   "dv1"], True, "a kernel with CONFIG_VETH (modprobe veth)"),
        probe.check("bridges", ["ip", "link", "add", "dbr0", "type", "bridge"], True,
                    "a kernel with CONFIG_BRIDGE (modprobe bridge)"),
        probe.check("iptables REDIRECT (Istio capture)", [*ipt, "-t", "nat", "-A", "OUTPUT",
                    "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"], True,
                    "apt install iptables; modprobe xt_REDIRECT"),
        probe.check("iptables statistic match (packet-drop, kube-proxy)",
                    [*ipt, "-A", "OUTPUT", "-m", "statistic", "--mode", "random",
                     "--probability", "0.5", "-j", "ACCEPT"], True, "modprobe xt_statistic"),
        probe.check("conntrack (kube-proxy NAT, conntrack faults)", ["conntrack", "-L"], True,
                    "apt install conntrack; modprobe nf_conntrack"),
        probe.check("NFQUEUE target (network-delay's userspace netem)",
                    [*ipt, "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "NFQUEUE",
                     "--queue-num", "7", "--queue-bypass"], False,
                    "modprobe nfnetlink_queue xt_NFQUEUE"),
        probe.check("tbf qdisc (bandwidth)", ["tc", "qdisc", "add", "dev", "lo", "root",
                    "tbf", "rate", "1mbit", "burst", "32kb", "latency", "50ms"], False,
                    "modprobe sch_tbf"),
        probe.check("htb qdisc (bandwidth/network-delay peer filters)",
                    ["tc", "qdisc", "replace", "dev", "lo", "root", "handle", "1:", "htb"], False,
                    "modprobe sch_htb"),
        probe.check("netem qdisc (network-delay in the kernel)",
                    ["tc", "qdisc", "replace", "dev", "lo", "root", "netem", "delay", "1ms"],
                    False, "modprobe sch_netem (without it network-delay uses its NFQUEUE "
                           "agent)"),
    ]


def _iptables_backend() -> Finding:
    ok, out = _run(["iptables", "-V"])
    backend = "nf_tables" if "nf_tables" in out else "legacy" if "legacy" in out else "?"
    return Finding("iptables", ok, True, f"{out} (backend {backend})" if ok else out,
                   "" if ok else "apt install iptables")


def _bridge_nf() -> Finding:
    reason = bridge_netfilter_error()
    return Finding("bridge netfilter (br_netfilter)", reason is None, True,
                   "loaded" if reason is None else f"{BRIDGE_NF_SYSCTL} missing",
                   "" if reason is None else BRIDGE_NF_FIX)


def _cgroups() -> Finding:
    try:
        groups = Cgroups()
    except LabError as exc:
        return Finding("cgroup cpu/memory controllers", False, False, str(exc),
                       "mount cgroup v2 with cpu and memory, or the v1 cpu,cpuacct,memory "
                       "hierarchies (container limits and container faults need them)")
    freezer = "freezer" if groups.has_freezer else "no freezer (pause falls back to SIGSTOP)"
    return Finding("cgroup cpu/memory controllers", True, False, f"{groups!r}, {freezer}")


def _proxy_user_reads_venv() -> Finding:
    argv = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_GID}", "--clear-groups",
            sys.executable, "-c", "import meshlab.proxy"]
    ok, out = _run(argv)
    return Finding(f"uid {PROXY_UID} can run the sidecar from this venv", ok, True,
                   "works" if ok else out,
                   "" if ok else "make the venv and the checkout readable by others "
                                 "(chmod o+rx on every parent folder)")


def _tools() -> list[Finding]:
    wanted = [("ip", True, "iproute2"), ("tc", True, "iproute2"), ("ss", True, "iproute2"),
              ("nsenter", True, "util-linux"), ("setpriv", True, "util-linux"),
              ("curl", True, "curl"), ("dnsmasq", True, "dnsmasq-base"),
              ("prometheus", False, "prometheus"), ("chromium", False, "chromium")]
    return [Finding(f"tool {tool}", bool(path := shutil.which(tool)), req, path or "not found",
                    "" if path else f"apt install {pkg} (scripts/setup.sh)")
            for tool, req, pkg in wanted]


def diagnose(probe_factory: Callable[[], _Probe] = _Probe) -> list[Finding]:
    """Every check, in a stable order (see the module docstring).

    Raises:
        LabError: not root, or no network namespace can be made (nothing else can run).
    """
    if os.geteuid() != 0:
        raise LabError("meshlab doctor: run as root (the lab creates network namespaces)")
    findings = [_bridge_nf(), _iptables_backend()]
    with probe_factory() as probe:
        findings.insert(0, Finding("network namespaces", True, True, f"made {probe.ns}"))
        findings += _kernel(probe)
    return findings + [_cgroups(), _proxy_user_reads_venv(), *_tools()]
