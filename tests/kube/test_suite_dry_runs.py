"""Every suite of ``suites/`` dry-run on the kube env (``--meshlab-env=kube --meshlab-dry-run``).

Each suite file runs in its own in-process pytest session (pytester), with kube settings that
name SSH access to the lab's nodes (nothing is ever connected to: a dry run prints the ``ssh``
lines), so node faults print too. For each suite the test asserts

- every test's outcome: skipped as a dry run, with the reason expected for it (``N checks not
  evaluated`` when it ran to its end, ``<what> not measured`` where it needed a real value,
  ``refused on the kube env: …`` for what the kube env cannot do) — never failed or errored;
- the printout (``<reports>/dry-run.txt``), as steps found in this order: the lab's manifests
  (Namespace, overlay objects, StatefulSets), the loads (the runner's ``kubectl exec``), each
  fault's inject and revert, and the namespace delete at the end of each lab.

Refused on kube (asserted below): ``test_dns`` (per-pod DNS query counts exist only in the
local lab's kube-dns; the DNSChaos inject and revert print first), ``test_sidecar_throttling``
(no container CPU usage on a cluster: refused before its fault), and without SSH settings the
node faults of ``test_node_poweroff``/``test_partition`` (:func:`test_node_faults_without_ssh`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SUITES = Path(__file__).resolve().parents[2] / "suites"
NS = "meshlab-lab"
NS_DELETE = rf"kubectl delete namespace {NS} --wait=true --ignore-not-found"
SSH_SETTINGS = """\
ssh:
  nodes: {worknode5: 192.0.2.5, worknode6: 192.0.2.6, worknode7: 192.0.2.7}
  key_file: /nonexistent/meshlab-dry-run-key
  power_on_command: [virsh, start, "{node}"]
"""
BASE = ("fortio-server-l2", "fortio-server", "netshoot")
DEBUG = r"-c meshlab-debug -- "
L1 = rf"kubectl exec -n {NS} fortio-server-0 {DEBUG}"
L2 = rf"kubectl exec -n {NS} fortio-server-l2-0 {DEBUG}"
RUN_ENDED = r"dry run: {} not evaluated(, \d+ truth tests? on unmeasured values taken as true)?; "
ACCESS_LOG = r"dry run: access log of {} not measured; "


def ran_to_end(checks: int) -> str:
    """The reason of a test that ran to its end: ``checks`` checks journaled, not evaluated."""
    return RUN_ENDED.format(f"{checks} checks?")


def refused(reason: str) -> str:
    return rf"dry run: refused on the kube env: {reason}"


def lab(*objects: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The lab's manifests in apply order: the Namespace, ``objects`` (``Kind/name`` of the
    overlays' Istio objects), the StatefulSets."""
    kinds = [rf"kind: {k}\nmetadata:\n  name: {n}\n" for k, n in (o.split("/") for o in objects)]
    return ((rf"kubectl apply -f - <<'EOF'\napiVersion: v1\nkind: Namespace\nmetadata:\n"
            rf"  name: {NS}\n"), *kinds,
            *(rf"kind: StatefulSet\nmetadata:\n  name: {w}\n" for w in (*BASE, *extra)))


def load(name: str, background: bool = False) -> str:
    """The runner of load ``name`` started in the client pod (a background one under the
    ``meshlab-bg`` wrapper), then its result fetched."""
    wrapper = r"sh -c .* meshlab-bg /tmp/meshlab-bg-\w+\.pid " if background else ""
    return (rf"kubectl exec -n {NS} netshoot-0 -c netshoot -- {wrapper}\S+ -m "
            rf"meshlab\.load\.locust_runner .*--out /tmp/meshlab-load-{re.escape(name)}-\w+\.json")


def chain(at: str, tag: str, rules: tuple[str, ...], hooks: tuple[str, ...]) -> tuple[str, ...]:
    """A fault chain's inject (create, rules, hooks) and revert (hook deletes, flush, delete)."""
    return (rf"{at}iptables -N MESHLAB-{tag}-(\w+)\n", *(rf"{at}iptables -A MESHLAB-{tag}-\w+ {r}"
                                                      for r in rules),
            *(rf"{at}iptables -I {h} 1 .*-j MESHLAB-{tag}-" for h in hooks))


def unchain(at: str, tag: str, hooks: tuple[str, ...]) -> tuple[str, ...]:
    return (*(rf"{at}iptables -D {h} .*-j MESHLAB-{tag}-" for h in hooks),
            rf"{at}iptables -F MESHLAB-{tag}-", rf"{at}iptables -X MESHLAB-{tag}-")


TBF = (rf"{L2}tc qdisc add dev eth0 root handle \w+: htb",
       rf"{L2}tc qdisc add dev eth0 parent \w+:3 tbf rate 1mbit",
       (rf"{L2}tc filter add dev eth0 parent \w+: protocol ip u32 match ip dst "
       r"'<fortio-server-0 IP>/32'"))
UNTBF = (rf"{L2}tc qdisc del dev eth0 root\n", rf"{L2}ip link del mlifb\w+\n")


def netem(delay: str) -> tuple[str, ...]:
    return (rf"{L2}ip link add (mlnd\w+) type ifb",
            rf"{L2}tc qdisc add dev eth0 handle ffff: ingress",
            rf"{L2}tc filter add dev eth0 parent ffff: .* redirect dev mlnd\w+",
            rf"{L2}tc qdisc add dev mlnd\w+ root handle 1: netem delay {delay}\n")


UNNETEM = (rf"{L2}tc qdisc del dev eth0 ingress\n", rf"{L2}ip link del mlnd\w+\n")
PAUSE = (r"# sleep 2 s: load before the pause\n",
         rf"{L2}sh -c 'kill -s STOP -1 2>/dev/null; kill -s STOP 1'\n",
         r"# sleep 4 s: the app stays paused PAUSE_S\n",
         rf"{L2}sh -c 'kill -s CONT -1 2>/dev/null; kill -s CONT 1'\n")
KILLS = (rf"{L2}kill -s KILL 1\n# wait until pod fortio-server-l2-0 is Ready",
         (rf"kubectl delete pod -n {NS} fortio-server-l2-0 --grace-period=0 --wait=false\n"
         r"# wait until pod fortio-server-l2-0 is Ready"))
HALF_CLOSE = (rf"{L1}sysctl -n net.netfilter.nf_conntrack_tcp_timeout_close_wait\n",
              rf"{L1}sysctl -w net.netfilter.nf_conntrack_tcp_timeout_close_wait=\d\n",
              (rf"kubectl exec -n {NS} tcp-echo-0 -c main-app -- sh -c '\n(?:.*\n)*?' "
              r"signal-app USR1 meshlab\.apps\.tcp_echo"))
UNHALF = ((rf"{L1}sysctl -w 'net.netfilter.nf_conntrack_tcp_timeout_close_wait="
          r"<value read by sysctl -n>'"),)
TCP_CLIENT = (rf"kubectl exec -n {NS} fortio-server-0 -c main-app -- sh -c .*meshlab-bg .*-m "
              r"meshlab\.apps\.tcp_client --connect tcp-echo:9000")
PARTITION_HOOKS = ("INPUT", "FORWARD")


def partition() -> tuple[str, ...]:
    steps: tuple[str, ...] = (r"# sleep 3 s: steady state before the partition",)
    for here, there in (("5", "6"), ("6", "5")):
        steps += chain(rf"ssh root@192\.0\.2\.{here} nsenter -t 1 -n ", "NP",
                       (rf"-s '<worknode{there} IP>/32' .*-j DROP",
                        rf"-s '<worknode{there} pod CIDR>' .*-j DROP"), PARTITION_HOOKS)
    steps += (r"# sleep 6 s: the partition lasts PARTITION_S",)
    for here in ("5", "6"):
        steps += unchain(rf"ssh root@192\.0\.2\.{here} nsenter -t 1 -n ", "NP", PARTITION_HOOKS)
    return steps


POWER = (r"ssh root@192\.0\.2\.6 sh -c 'echo o > /proc/sysrq-trigger'", r"virsh start worknode6\n")
REJECT = r"INPUT -p tcp -m conntrack --ctorigdstport 8080 .*-j REJECT --reject-with tcp-reset"
DNS_CHAOS = (r"kind: DNSChaos\n(.*\n)*?  action: error\n(.*\n)*?  - fortio-server-l2\.\*\n",
             rf"{L1}ss -K -tn dst '<fortio-server-l2 ClusterIP>' dport = :8080",
             rf"kubectl delete -n {NS} dnschaos\.chaos-mesh\.org -l meshlab\.io/fault=\w+ ")
DNS_REFUSED = refused(r"dns query counts: the kube env counts no DNS queries per pod")
HTTP_FAULT = ((r"kind: VirtualService\nmetadata:\n  name: meshlab-http-fault-fortio-server-l2\n"
              r"(.*\n)*?        httpStatus: 503\n(.*\n)*?        fixedDelay: 100ms\n"),
              r"# sleep 3 s: the fault's window\n", (rf"kubectl delete -n {NS} virtualservice\."
              r"networking\.istio\.io -l meshlab\.io/http-fault=fortio-server-l2 "))
DROP = r"--probability 0\.5 -m comment --comment meshlab:packet-drop:\w+ -j DROP"
IPS = r"'<fortio-server-0 IP>/32' -[sd] '<fortio-server-l2-0 IP>/32'"


@dataclass(frozen=True)
class Expect:
    """What one suite's dry run must show.

    Attributes:
        outcomes: test name → regex its skip reason must match.
        steps: regexes found in this order in the printout (each after the previous one).
    """

    outcomes: dict[str, str]
    steps: tuple[str, ...]


EXPECTED: dict[str, Expect] = {
    "test_baseline": Expect(
        {"test_steady_state_through_both_sidecars": ran_to_end(6),
         "test_request_id_is_shared_by_both_hops": ACCESS_LOG.format("fortio-server-0")},
        (*lab(), load("warm-up"), load("baseline"), load("single"), NS_DELETE)),
    "test_bandwidth": Expect(
        {"test_a_1mbit_link_makes_large_responses_slow": ran_to_end(7),
         "test_a_route_timeout_fails_large_responses_fast":
             r"dry run: load 'limited-64k' status_counts not measured; "},
        (*lab(), load("warm-up"), load("baseline-64k"), *TBF, load("limited-1k"),
         load("limited-64k"), *UNTBF, NS_DELETE, *lab("VirtualService/fortio-server-l2"), *TBF,
         load("limited-1k"), load("limited-64k"), *UNTBF, NS_DELETE)),
    "test_conntrack_expiry": Expect(
        {"test_port_reuse_meets_the_leaked_socket_as_the_probe_predicts":
             r"dry run: stdout of `cat /proc/net/netstat` in fortio-server-0\[::2\] not "
             r"measured; "},
        (*lab(extra=("tcp-echo",)), (rf"kubectl exec -n {NS} fortio-server-0 -c main-app -- "
         r"getent hosts tcp-echo"), TCP_CLIENT, *HALF_CLOSE,
         (rf"{L1}conntrack -D -p tcp --orig-dst '<not measured \(dry run\): stdout of `getent "
         r"hosts tcp-echo` in fortio-server-0\[0\]>' --orig-port-dst 9000 --state CLOSE_WAIT"),
         *UNHALF, rf"{L1}ss -K -Htn state last-ack sport = :61234", NS_DELETE)),
    "test_dns": Expect(
        {"test_servfail_for_l2_fails_l1_app_with_flag_dash": DNS_REFUSED,
         "test_dns_proxying_answers_l2_without_kube_dns": DNS_REFUSED},
        (*lab(), load("warm"), *DNS_CHAOS, NS_DELETE, *lab(), load("warm"), *DNS_CHAOS,
         NS_DELETE)),
    "test_half_close": Expect(
        {f"test_{name}": r"dry run: stdout of `conntrack -L -p tcp --sport '<not measured "
                         rf"\(dry run\): events in {app}-events\.jsonl\[connected\]"
                         r"\[local_port\]>'` in fortio-server-0 not measured; "
         for name, app in (("half_closed_session_leaks_sidecar_sockets", "leak"),
                           ("tcp_idle_timeout_bounds_the_leak", "mitigated"))},
        (*lab(extra=("tcp-echo",)), TCP_CLIENT, *HALF_CLOSE, *UNHALF, NS_DELETE,
         *lab("DestinationRule/tcp-echo", extra=("tcp-echo",)), TCP_CLIENT, *HALF_CLOSE,
         *UNHALF, NS_DELETE)),
    "test_http_fault": Expect(
        {"test_a_live_abort_and_delay_show_as_fi_di_only_inside_their_window":
             ACCESS_LOG.format("fortio-server-0")},
        (*lab(), load("live-fault", background=True),
         r"# sleep 3 s: steady state before the push\n", *HTTP_FAULT, load("after"),
         NS_DELETE)),
    "test_keepalive_race": Expect(
        {name: ACCESS_LOG.format("fortio-server-0") for name in (
            "test_idle_reuse_gives_503_uc",
            "test_pool_idle_timeout_shorter_than_upstream_prevents_uc",
            "test_retry_on_reset_hides_the_race")},
        (*lab(), load("race"), NS_DELETE, *lab("DestinationRule/fortio-server-l2"),
         load("pool-idle-timeout"), NS_DELETE, *lab("VirtualService/fortio-server-l2"),
         load("retry-on-reset"), NS_DELETE)),
    "test_latency": Expect(
        {"test_a_10ms_delay_is_visible_at_the_client": ran_to_end(3),
         "test_a_delay_past_the_route_timeout_gives_504_ut": ran_to_end(3),
         "test_per_try_timeout_and_a_healthy_replica_bound_the_delay": ran_to_end(4)},
        (*lab(), load("warm-up"), load("baseline"), *netem("10ms 2ms 0% distribution normal"),
         load("delay-10ms"),
         *UNNETEM, NS_DELETE, *lab("VirtualService/fortio-server-l2"), *netem("200ms"),
         load("delay-200ms"), *UNNETEM, NS_DELETE, *lab("DestinationRule/fortio-server-l2"),
         load("warm-up"), *netem("1000ms"), load("delay-l2-0"), *UNNETEM, NS_DELETE)),
    "test_node_poweroff": Expect(
        {name: r"dry run: sockets in fortio-server-0 not measured; " for name in (
            "test_poweroff_leaves_half_open_connections_and_spikes_tail_latency",
            "test_timeouts_and_ejection_bound_the_outage")},
        (*lab(), load("poweroff", background=True), *POWER, NS_DELETE,
         *lab("DestinationRule/fortio-server-l2"), load("mitigated", background=True), *POWER,
         NS_DELETE)),
    "test_packet_drop": Expect(
        {"test_half_the_packets_of_l1_to_l2_dropped":
             r"dry run: load 'drop-50' status_counts not measured; "},
        (*lab(), load("warm-up"), load("baseline"),
         *chain(L1, "PD", (rf"-s {IPS} -m statistic --mode random {DROP}",
                           rf"-d {IPS} -m statistic --mode random {DROP}"),
                ("INPUT", "OUTPUT")),
         load("drop-50"), *unchain(L1, "PD", ("INPUT", "OUTPUT")), NS_DELETE)),
    "test_partition": Expect(
        {"test_partition_stalls_connections_and_l1_logs_dc": ran_to_end(3),
         "test_timeouts_and_ejection_bound_the_partition": ran_to_end(2)},
        (*lab(), load("partition", background=True), *partition(), load("after-heal"),
         NS_DELETE, *lab("DestinationRule/fortio-server-l2"),
         load("mitigated", background=True), *partition(), NS_DELETE)),
    "test_pod_restart": Expect(
        {"test_a_killed_pod_fails_requests_until_restarted_and_back_in_endpoints":
             ran_to_end(6),
         "test_retries_on_another_replica_and_ejection_hide_a_pod_restart": ran_to_end(1)},
        (*lab(), load("kills", background=True), *KILLS, load("recovered"), NS_DELETE,
         *lab("DestinationRule/fortio-server-l2"), load("mitigated", background=True), *KILLS,
         NS_DELETE)),
    "test_response_flags": Expect(
        {"test_app_503_passes_with_no_flag": ACCESS_LOG.format("fortio-server-l2-0"),
         "test_unreachable_l2_gives_uf_urx_at_l1_outbound":
             r"dry run: stdout of `ss -Htn state established dst '<fortio-server-l2-0 IP>:"
             r"8080'` in fortio-server-0 not measured; "},
        (*lab(), load("app-503"), load("warm-pool"), rf"{L2}iptables -I {REJECT}",
         load("l2-refused"), rf"{L2}iptables -D {REJECT}", NS_DELETE)),
    "test_sidecar_throttling": Expect(
        {"test_a_sidecar_cpu_limit_near_its_need_throttles_the_tail_and_removing_it_restores_it":
             refused(r"container usage: the kube env reports none for pod fortio-server-0")},
        (*lab(), load("warm-up"), NS_DELETE)),
    "test_stuck_app": Expect(
        {"test_a_paused_app_hangs_requests_until_the_callers_timeout": ran_to_end(3),
         "test_per_try_timeout_and_ejection_bound_a_stuck_replica": ran_to_end(2)},
        (*lab(), load("paused", background=True), *PAUSE, NS_DELETE,
         *lab("DestinationRule/fortio-server-l2"), load("mitigated", background=True), *PAUSE,
         NS_DELETE)),
}


def dry_run(pytester: pytest.Pytester, suite: str, *options: str) -> tuple[dict[str, str], str]:
    """Dry-run ``suites/<suite>.py`` in-process: ``({test name: skip reason}, printout)``.

    Raises:
        AssertionError: a test did not end skipped (its report is shown).
    """
    reports = pytester.path / "reports"
    rec = pytester.inline_run(str(SUITES / f"{suite}.py"), "--meshlab-env=kube",
                              "--meshlab-dry-run", f"--meshlab-reports={reports}",
                              "-p", "no:hypothesispytest", *options)
    outcomes = {}
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or not rep.passed:
            assert rep.skipped, f"{rep.nodeid} ({rep.when}) {rep.outcome}:\n{rep.longreprtext}"
            outcomes[rep.nodeid.rpartition("::")[2]] = rep.longrepr[2]
    return outcomes, (reports / "dry-run.txt").read_text(encoding="utf-8")


def assert_in_order(text: str, steps: tuple[str, ...]) -> None:
    """Each regex of ``steps`` matches ``text`` after where the previous one matched."""
    at = 0
    for n, step in enumerate(steps):
        found = re.compile(step).search(text, at)
        assert found, (f"step {n} not found after offset {at}: {step!r}\n--- printout from "
                       f"there ---\n{text[at:at + 3000]}")
        at = found.end()


@pytest.fixture
def ssh_settings(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "no-such-kubeconfig"))
    path = pytester.path / "kube.yaml"
    path.write_text(SSH_SETTINGS)
    return f"--meshlab-kube-config={path}"


def test_every_suite_has_its_expectations():
    assert sorted(EXPECTED) == sorted(p.stem for p in SUITES.glob("test_*.py"))


@pytest.mark.parametrize("suite", sorted(EXPECTED))
def test_suite_dry_run_prints_its_lab_loads_and_faults_and_ends_skipped(pytester, ssh_settings,
                                                                      suite):
    expect = EXPECTED[suite]
    outcomes, printout = dry_run(pytester, suite, ssh_settings)
    assert sorted(outcomes) == sorted(expect.outcomes)
    for test, reason in outcomes.items():
        assert re.match(expect.outcomes[test], reason), (test, reason)
    assert_in_order(printout, expect.steps)
    assert printout.rstrip().endswith(NS_DELETE.replace("\\", ""))  # the last lab is gone
    assert "MESHLAB-" not in printout.split(NS_DELETE.replace("\\", ""))[-1]


def test_node_faults_without_ssh_are_refused_after_the_load_starts(pytester, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "no-such-kubeconfig"))
    outcomes, printout = dry_run(pytester, "test_node_poweroff")
    assert set(outcomes.values()) == {
        ("dry run: refused on the kube env: ssh: not configured; node faults needs SSH access "
        "to the cluster's nodes: set ssh: {nodes: {<node>: <address>}, key_file: <private "
        "key>} in the kube settings (docs/NODE_DRIVERS.md)")}
    assert_in_order(printout, (*lab(), load("poweroff", background=True), NS_DELETE))
    assert "ssh " not in printout and "virsh" not in printout
