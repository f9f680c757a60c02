"""kube-dns fails L2's names (``dns-error`` SERVFAIL for ``fortio-server-l2.*``, Chaos Mesh
DNSChaos ``error``) under load through client → L1 → L2.

DNS is only asked when a connection is made: L1's app (fortio ``-M``) pools its keep-alive
connections to ``http://fortio-server-l2:8080`` and resolves the name per new connection, as
Go's ``net/http`` does. So the fault bites when L1's app needs new connections — after its pool
was lost (an app or sidecar restart, a connection reset); the test drops L1's pooled
connections (``ss -K``) as the fault starts, so every request of the window must dial.

- **Phenomenon** (base lab): each dial's lookup walks the ``ndots:5`` search path — ``A`` and
  ``AAAA`` for ``fortio-server-l2.mark.svc.cluster.local``, ``….svc.cluster.local``,
  ``….cluster.local`` and the bare name, every one SERVFAIL, which glibc asks again — and L1's
  app answers the client with its own error: L1's inbound logs the app's status with response
  flag ``-`` (the mesh is not at fault; L1's outbound never sees a request). The DNS queries L1
  sent per request are reported (measured: 14 per request, 60 of 60 requests failed at 20/s).
- **Mitigation** (``dns-capture``: ``ISTIO_META_DNS_CAPTURE`` on L1): L1's sidecar answers
  ``fortio-server-l2`` from its own registry, kube-dns is never asked (0 queries from L1) and
  every request is answered.
"""

import time

import pytest

from meshlab import ErrorRateAtMost, Run, StatAtLeast, StatAtMost
from meshlab.collectors.accesslog import end_second
from meshlab.faults.dns_error import DnsError

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
URL = f"http://{L1}:8070/echo"
RATE_PER_S = 20
FAULT_LOAD_S = 3.0


def _l2_cluster_ip(run: Run) -> str:
    return next(s["cluster_ip"] for s in run.env.describe()["topology"]["services"]
                if s["name"] == L2)


def dns_fault_under_load(run: Run) -> dict:
    """SERVFAIL for L2's names; L1's pooled connections to L2 dropped; load through L1.
    Returns what L1 sent to kube-dns and what its inbound logged."""
    l1 = run.names.pod(L1)
    run.load("warm", URL, users=2, rate_per_s=RATE_PER_S, duration_s=1, timeout_s=10)
    shell = run.env.pod_shell(l1)
    with run.fault(DnsError(patterns=[f"{L2}.*"], action="servfail"), max_duration_s=60):
        shell.run(["ss", "-K", "-tn", "dst", _l2_cluster_ip(run), "dport", "=", ":8080"])
        before, t0 = run.dns_query_counts()[l1], time.time()
        run.load("dns-fault", URL, users=4, rate_per_s=RATE_PER_S, duration_s=FAULT_LOAD_S,
                 timeout_s=10, mode="open-loop")
        queries = run.dns_query_counts()[l1] - before
    requests = run.load_record("dns-fault")["requests"]
    inbound = [r for r in run.records(l1) if r.get("upstream_cluster") == "inbound|8070||"
               and (end_second(r) or 0) >= int(t0)]  # the fault load's requests only
    app_errors = [r for r in inbound if r.get("response_code") != 200]
    data = {"requests": requests, "l1_dns_queries": queries,
            "dns_queries_per_request": round(queries / max(requests, 1), 2),
            "app_errors": len(app_errors),
            "app_errors_flag_dash": sum(1 for r in app_errors if r.get("response_flags") == "-"),
            "app_error_share": round(len(app_errors) / max(requests, 1), 3)}
    run.observe("dns", "dns", data, pod=l1)
    return data


def test_servfail_for_l2_fails_l1_app_with_flag_dash(meshlab_run: Run) -> None:
    data = dns_fault_under_load(meshlab_run)
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="warm"),
        StatAtLeast("dns", "app_error_share", 0.9,
                    label="share of requests L1's app failed (its lookup got SERVFAIL)"),
        StatAtLeast("dns", "app_errors_flag_dash", 0.9 * data["requests"],
                    label="L1 inbound app errors with flag '-' (not the mesh)"),
        StatAtLeast("dns", "dns_queries_per_request", 2,
                    label="DNS queries L1 sent per request (ndots:5 search path)"),
    )


@pytest.mark.meshlab_lab(overlays=["dns-capture"])
def test_dns_proxying_answers_l2_without_kube_dns(meshlab_run: Run) -> None:
    dns_fault_under_load(meshlab_run)
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="dns-fault"),
        StatAtMost("dns", "l1_dns_queries", 0, label="queries L1 sent to kube-dns"),
    )
