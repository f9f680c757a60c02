"""Putting a dns-error fault front (:mod:`meshlab.envs.local.dns_front`) in front of the lab's
dnsmasq, and taking it away.

Inject: the front process starts in the DNS host's netns (pid recorded in ``LabState.dns`` as
``front_pid`` before anything else changes), and once it answers on :data:`FRONT_PORT`, two
``nat PREROUTING`` rules (UDP and TCP ``--dport 53``, comment ``meshlab:dns-error:<id>``)
REDIRECT the pods' queries to it; the DNS host's UDP/53 conntrack entries are deleted so no
earlier flow bypasses it. Revert, in the opposite order: rules deleted, conntrack entries
deleted again (a flow redirected to the front must not outlive it), front killed. Revert is
idempotent and needs nothing but the lab name and the fault id, so the deadman and ``meshlab
down`` can run it from a fresh process. One dns-error fault at a time per lab.
"""

from __future__ import annotations

import json
import sys

from meshlab.envs.local import kube_dns
from meshlab.envs.local.dns_front import FRONT_PORT
from meshlab.envs.local.netns import NetnsShell, kill_pids, process_alive
from meshlab.envs.local.plan import LabPlan
from meshlab.envs.local.state import locked_state
from meshlab.errors import ConfigError, LabError
from meshlab.polling import PollTimeout, wait_until


def _tag(fault_id: str) -> list[str]:
    return ["-m", "comment", "--comment", f"meshlab:dns-error:{fault_id}"]


def _rules(fault_id: str) -> list[list[str]]:
    return [["PREROUTING", "-p", proto, "--dport", str(kube_dns.PORT), *_tag(fault_id),
             "-j", "REDIRECT", "--to-ports", str(FRONT_PORT)] for proto in ("udp", "tcp")]


def _flush_conntrack(shell: NetnsShell) -> None:
    shell.run(["conntrack", "-D", "-p", "udp", "--orig-port-dst", str(kube_dns.PORT)],
              check=False, timeout_s=10)


def start(plan: LabPlan, fault_id: str, patterns: list[str], action: str,
          percent: float, timeout_s: float = 10.0) -> str:
    """Start the front and redirect port 53 to it.

    Raises:
        ConfigError: another dns-error fault is active in the lab.
        LabError: the lab has no cluster DNS, or the front did not answer in ``timeout_s``.
    """
    lab = plan.lab
    with locked_state(lab) as state:
        if state is None or not state.dns.get("pid"):
            raise LabError(f"dns-error: lab {lab!r} has no cluster DNS running")
        other = state.dns.get("front_id")
        if other and other != fault_id and process_alive(int(state.dns.get("front_pid", 0))):
            raise ConfigError(f"dns-error: fault {other} is active in lab {lab!r}; revert it "
                              f"first (one dns-error fault at a time)")
        folder = kube_dns.dns_dir(lab)
        cfg = {"listen_port": FRONT_PORT, "upstream": state.dns["ip"], "patterns": patterns,
               "action": action, "percent": percent, "log": str(folder / "front.log")}
        conf = folder / f"front-{fault_id}.json"
        conf.write_text(json.dumps(cfg))
        shell = NetnsShell(state.dns["netns"], "kube-dns")
        state.dns["front_id"] = fault_id
        state.dns["front_pid"] = 0
        state.save()
        proc = shell.popen([sys.executable, "-m", "meshlab.envs.local.dns_front", "--config",
                            str(conf)], stdout=folder / "front.out", stderr=folder / "front.out")
        state.dns["front_pid"] = proc.pid
        state.save()
    probe = kube_dns.records(plan)[0][0]  # never matches a Service pattern: relayed

    def answering() -> bool:
        if not process_alive(proc.pid):
            raise LabError(f"dns-error: the fault front exited: "
                           f"{(folder / 'front.out').read_text(errors='replace')[-300:]}")
        res = shell.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(FRONT_PORT),
                         "@127.0.0.1", probe], check=False, timeout_s=5)
        return kube_dns.is_ipv4(res.stdout.strip())  # an answer, not dig's error text

    try:
        wait_until(answering, timeout_s=timeout_s, what="dns-error front answering")
    except PollTimeout as exc:
        raise LabError(f"dns-error: {exc}") from None
    for rule in _rules(fault_id):
        shell.run(["iptables", "-t", "nat", "-A", *rule])
    _flush_conntrack(shell)
    return (f"kube-dns answers {action} for {percent:g} % of queries matching "
            f"{', '.join(patterns)} (front pid {proc.pid} on :{FRONT_PORT})")


def stop(lab: str, fault_id: str) -> str:
    """Remove the redirect and stop the front (idempotent: a missing lab, rule or process is
    not an error)."""
    with locked_state(lab) as state:
        if state is None or not state.dns.get("netns"):
            return f"dns-error {fault_id}: nothing to revert (lab {lab!r} is down)"
        shell = NetnsShell(state.dns["netns"], "kube-dns")
        removed = 0
        for rule in _rules(fault_id):
            while shell.run(["iptables", "-t", "nat", "-D", *rule], check=False,
                            timeout_s=10).returncode == 0:
                removed += 1
        _flush_conntrack(shell)
        pid = int(state.dns.get("front_pid") or 0)
        if state.dns.get("front_id") == fault_id:
            if pid:
                kill_pids([pid])
            state.dns.pop("front_id", None)
            state.dns.pop("front_pid", None)
            state.save()
        else:
            pid = 0
    return f"dns-error {fault_id}: {removed} redirect rule(s) removed, front " + (
        f"pid {pid} stopped" if pid else "not running")
