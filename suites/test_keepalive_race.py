"""HTTP/1.1 keep-alive race → 503 ``UC`` (DESIGN.md §5.5; book: "Envoy 与 Downstream/Upstream
连接状态不同步"), and its two mitigations.

An upstream closes keep-alive connections idle longer than its own idle timeout (Go
``http.Server.IdleTimeout``, nginx ``keepalive_timeout``, Node's 5 s), while the client sidecar's
HTTP/1 pool keeps them for Envoy's default 1 h and reuses one for the next request. The request
meets the upstream's close, the sidecar sees the connection end before any response byte and
answers 503 ``UC`` ``upstream_reset_before_response_started{connection_termination}`` (ENVOY.md
§1). Istio's default outbound retry policy (``connect-failure,refused-stream,unavailable,
cancelled,retriable-status-codes``, ENVOY.md §8) does not cover a reset after the request was
sent, so the 503 reaches the client.

Hop: overlay ``keepalive-race`` takes L2 out of the mesh (``sidecar.istio.io/inject: "false"``),
so L1's sidecar pools connections straight to L2's app on the client-side cluster
``outbound|8080||fortio-server-l2…``, where Istio puts both mitigations (a DestinationRule's
pool settings and a VirtualService's retries apply to outbound clusters and routes; Istio gives
inbound clusters neither). The UC shows on that cluster of L1's access log; L1's inbound relays
the app's 503 with ``-``.

Modelling (:mod:`meshlab.apps.idle_race`): with a real idle timer the race window is under a
millisecond, so L2's app runs with ``-meshlab-idle-race 500ms``: a request arriving after 500 ms
of keep-alive idle is answered with a RST, as by a server whose timer fires as it arrives. The
load is one request per second from one user, so every reuse of a pooled connection comes after
~1 s idle (a response would have to take over 500 ms to bring a gap under the limit). Expected
per ``REQUESTS`` requests: without mitigation every other request reuses the connection the
previous one opened → ``REQUESTS // 2`` UC; with the pool ``idleTimeout`` of 100 ms no
connection is ever reused → 0 UC; with ``retryOn: reset`` every request after the first is
retried once on a new connection → ``REQUESTS - 1`` retries, 0 errors. Counts are asserted with
margin (``MIN_RACES``); the structural facts (a UC only on a reused connection, every reuse after
the limit is a UC, every reset retried and answered 200) are asserted exactly. All numbers are
recorded with ``meshlab_run.observe`` (``<load>:summary``, ``<load>:pooled-use``).

On a cluster (#6) L2 must run meshlab's fortio-compatible app (real fortio rejects
``-meshlab-idle-race``; with only its ``-server-idle-timeout`` the race is real but rare).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from meshlab import ErrorRateAtMost, OnlyResponseFlags, ResponseFlagsCount, Run
from meshlab.collectors import envoy_stats

pytestmark = pytest.mark.meshlab_lab(overlays=["keepalive-race"])

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L2_PORT = 8080
URL = f"http://{L1}:8070/echo?size=100"
RACE_S = 0.5  # L2's -meshlab-idle-race (overlay keepalive-race)
RATE_PER_S = 1.0  # one user: ~1 s between requests, twice the upstream's limit
REQUESTS = 8
MIN_RACES = 3  # of 4 UC / 7 retried resets expected; each response slower than 0.5 s costs one
UC_DETAILS = "upstream_reset_before_response_started{connection_termination}"
COUNTERS = ("upstream_cx_total", "upstream_cx_idle_timeout",
            "upstream_cx_destroy_remote_with_active_rq", "upstream_rq_retry",
            "upstream_rq_retry_success")


def hops(run: Run) -> tuple[str, str]:
    """L1's pod and L1's outbound cluster for L2, as this lab names them."""
    return run.names.pod(L1), run.names.outbound_cluster(L2, L2_PORT)


def _start_s(record: dict[str, Any]) -> float:
    stamp = dt.datetime.strptime(record["start_time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=dt.UTC).timestamp()


def pooled_use(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each outbound access-log record with how its upstream connection was obtained.

    Returns:
        ``[{"code", "flags", "details", "reused": bool, "idle_s": float | None}]`` in log order;
        ``reused`` when the record's ``upstream_local_address`` served an earlier request still
        pooled, ``idle_s`` the seconds from that request's end to this one's start.
    """
    free_at: dict[str, float] = {}  # local address -> end of its last request, while pooled
    out = []
    for rec in records:
        addr, start = rec["upstream_local_address"], _start_s(rec)
        ended = free_at.pop(addr, None)
        if rec["response_flags"] == "-":
            free_at[addr] = start + rec["duration"] / 1000
        out.append({"code": rec["response_code"], "flags": rec["response_flags"],
                    "details": rec["response_code_details"], "reused": ended is not None,
                    "idle_s": None if ended is None else round(start - ended, 3)})
    return out


def cluster_counters(run: Run, pod: str, cluster: str) -> dict[str, int]:
    """The :data:`COUNTERS` of ``cluster`` (``cluster.<name>;.<counter>``) on a sidecar."""
    prefix = f"cluster.{cluster};."
    values = envoy_stats.snapshot(run.env, pod, re.escape(prefix))
    return {c: values.get(prefix + c, 0) for c in COUNTERS}


def sparse_load(run: Run, name: str) -> tuple[Any, list[dict[str, Any]], dict[str, int]]:
    """``REQUESTS`` requests, one per second, through L1.

    Returns:
        The load result, L1's outbound records through :func:`pooled_use`, and the change of
        the cluster's :data:`COUNTERS`; all three are observed in the journal.
    """
    l1, l2_cluster = hops(run)
    before = cluster_counters(run, l1, l2_cluster)
    load = run.load(name, URL, users=1, rate_per_s=RATE_PER_S, max_requests=REQUESTS,
                    duration_s=REQUESTS / RATE_PER_S + 5)
    uses = pooled_use([r for r in run.records(l1) if r.get("upstream_cluster") == l2_cluster])
    counters = envoy_stats.delta(before, cluster_counters(run, l1, l2_cluster))
    run.observe(f"{name}:pooled-use", "accesslog", uses, pod=l1, cluster=l2_cluster)
    run.observe(f"{name}:summary", "envoy_stats", {
        "requests": load.requests, "client_status_counts": load.status_counts,
        "uc": sum(u["flags"] == "UC" for u in uses), "reused": sum(u["reused"] for u in uses),
        **counters}, pod=l1, cluster=l2_cluster, race_after_s=RACE_S,
        rate_per_s=RATE_PER_S)
    return load, uses, counters


def test_idle_reuse_gives_503_uc(meshlab_run: Run) -> None:
    """No mitigation: every reuse of a pooled connection after > 500 ms idle gets a RST → 503
    ``UC`` at L1's outbound, relayed to the client; Istio's default retries do not retry it."""
    l1, l2_cluster = hops(meshlab_run)
    load, uses, counters = sparse_load(meshlab_run, "race")
    uc = [u for u in uses if u["flags"] == "UC"]
    assert load.requests == REQUESTS
    assert load.status_counts.get("503", 0) == len(uc) >= MIN_RACES, (load.status_counts, uses)
    assert load.status_counts.get("200", 0) == REQUESTS - len(uc)
    assert all(u["reused"] and u["code"] == 503 and u["details"] == UC_DETAILS for u in uc), uses
    assert all(u["flags"] == "UC" for u in uses  # 0.2 s: ms rounding of the log's times
               if u["reused"] and u["idle_s"] >= RACE_S + 0.2), uses
    assert all(u["flags"] == "-" for u in uses if not u["reused"]), uses
    assert counters["upstream_rq_retry"] == 0
    assert counters["upstream_cx_destroy_remote_with_active_rq"] == len(uc)
    meshlab_run.check(
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="UC", at_least=MIN_RACES),
        ResponseFlagsCount(l1, cluster="inbound|8070||", flag="-", at_least=REQUESTS),
        OnlyResponseFlags(allowed={"-", "UC"}),
    )


@pytest.mark.meshlab_lab(overlays=["keepalive-race", "pool-idle-timeout"])
def test_pool_idle_timeout_shorter_than_upstream_prevents_uc(meshlab_run: Run) -> None:
    """DR ``http.idleTimeout: 100ms`` < the upstream's 500 ms: the sidecar closes each pooled
    connection first, every request gets a fresh one → 0 UC, 0 errors."""
    l1, l2_cluster = hops(meshlab_run)
    load, uses, counters = sparse_load(meshlab_run, "pool-idle-timeout")
    assert load.requests == REQUESTS
    assert not any(u["reused"] for u in uses), uses
    assert counters["upstream_cx_idle_timeout"] >= REQUESTS - 1, counters
    assert counters["upstream_cx_destroy_remote_with_active_rq"] == 0, counters
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="pool-idle-timeout"),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="UC", at_most=0),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="-", at_least=REQUESTS),
        OnlyResponseFlags(allowed={"-"}),
    )


@pytest.mark.meshlab_lab(overlays=["keepalive-race", "retry-on-reset"])
def test_retry_on_reset_hides_the_race(meshlab_run: Run) -> None:
    """VS ``retries: {attempts: 2, retryOn: reset}``: each reset attempt is retried on a new
    connection → 0 client errors; the counters show the resets and the successful retries, and
    the app sees the retried attempt's ``x-envoy-attempt-count: 2``."""
    l1, l2_cluster = hops(meshlab_run)
    load, uses, counters = sparse_load(meshlab_run, "retry-on-reset")
    resets = counters["upstream_cx_destroy_remote_with_active_rq"]
    assert load.requests == REQUESTS
    assert resets >= MIN_RACES, counters
    assert counters["upstream_rq_retry"] == counters["upstream_rq_retry_success"] == resets, counters
    assert all(u["flags"] == "-" and u["code"] == 200 for u in uses), uses
    # each request after the first finds the previous connection pooled: either it is still
    # fresh and serves it (logged as reused), or it is reset and the retry answers on a new
    # connection (the log shows that new connection, not the pooled one)
    assert resets + sum(u["reused"] for u in uses) == REQUESTS - 1, (counters, uses)
    meshlab_run.check(
        ErrorRateAtMost(0.0, load="retry-on-reset"),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="UC", at_most=0),
        OnlyResponseFlags(allowed={"-"}),
    )
    meshlab_run.sleep(RACE_S + 0.2, "L1's pooled connection idles past the upstream's limit")
    res = meshlab_run.shell(meshlab_run.client).run(
        ["curl", "-sS", "--max-time", "5", "http://fortio-server:8070/debug"])
    meshlab_run.observe("retry-on-reset:debug", "http", res.stdout[-2000:])
    assert "X-Envoy-Attempt-Count: 2" in res.stdout, res.stdout
