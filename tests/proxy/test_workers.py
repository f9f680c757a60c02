"""Envoy's worker model on real sockets: sidecars with ``concurrency: 2`` in the two-pod lab.

Each sidecar is a main process (admin, 15090, 15020, flush) and two forked workers sharing the
capture listeners through ``SO_REUSEPORT``. Requests go out on fresh connections, so the kernel
spreads them over both workers (all 64 on one worker has probability 2^-63): a merged counter
that equals the number of requests sent therefore counts every worker's share.
"""

import json
import os
import signal
from pathlib import Path

import pytest
from _pairlab import FQDN, pair_lab, poll
from prometheus_client.parser import text_string_to_metric_families

N = 64
VIP = "10.96.0.12"


@pytest.fixture(scope="module")
def lab():
    with pair_lab({"concurrency": 2}) as lab:
        yield lab


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def admin(lab, ns: str, path: str, method: str = "GET", port: int = 15000) -> dict:
    return lab.client(ns, {"op": "http", "host": "127.0.0.1", "port": port, "path": path,
                           "method": method})


def istio(lab, which: str, family: str, sample: str, path: str | None = None) -> float:
    """Sum of ``sample`` of the Istio ``family`` for requests to FQDN (200s) on 15090."""
    ns, ip = (lab.ns_a, "10.244.1.2") if which == "a" else (lab.ns_b, "10.244.1.3")
    body = lab.get(ns, ip, 15090, "/stats/prometheus")[0]["body"]
    total = 0.0
    for fam in text_string_to_metric_families(body):
        if fam.name != family:
            continue
        for s in fam.samples:
            if s.name == sample and s.labels.get("destination_service") == FQDN and \
                    s.labels.get("response_code") == "200":
                total += s.value
    return total


def test_a_main_and_two_workers_report_concurrency_2(lab):
    for which in ("a", "b"):
        main = lab.sidecar(which).pid
        kids = poll(lambda m=main: children(m), lambda k: len(k) == 2, timeout_s=5)
        assert len(kids) == 2, kids
    info = json.loads(admin(lab, lab.ns_a, "/server_info")["body"])
    assert info["command_line_options"]["concurrency"] == 2
    stats = admin(lab, lab.ns_a, "/stats?filter=^server\\.concurrency$")["body"]
    assert stats.strip() == "server.concurrency: 2"


def test_merged_stats_equal_the_requests_sent(lab):
    total = "istio_requests_total"
    before = {w: istio(lab, w, "istio_requests", total) for w in ("a", "b")}
    hist_before = istio(lab, "a", "istio_request_duration_milliseconds",
                        "istio_request_duration_milliseconds_count")
    resps = lab.get(lab.ns_a, VIP, 8080, "/echo?merge=1", n=N, keepalive=False)
    assert [r["status"] for r in resps] == [200] * N
    for which in ("a", "b"):  # source and destination reporters
        got = poll(lambda w=which: istio(lab, w, "istio_requests", total) - before[w],
                   lambda v: v >= N, timeout_s=5)
        assert got == N, which
    # histograms: merged at the next flush (0.2 s), every worker's samples
    got = poll(lambda: istio(lab, "a", "istio_request_duration_milliseconds",
                             "istio_request_duration_milliseconds_count") - hist_before,
               lambda v: v >= N, timeout_s=5)
    assert got == N
    # /clusters host counters are merged the same way
    body = admin(lab, lab.ns_a, "/clusters")["body"]
    rq = [ln for ln in body.splitlines()
          if ln.startswith(f"outbound|8080||{FQDN}::10.244.1.3:8080::rq_total::")]
    assert rq and int(rq[0].rsplit("::", 1)[1]) >= N


def test_access_log_is_whole_lines_from_every_worker(lab):
    resps = lab.get(lab.ns_a, VIP, 8080, "/echo?log=1", n=N, keepalive=False)
    assert [r["status"] for r in resps] == [200] * N
    # log_lines parses every line as JSON: a torn or interleaved line fails here
    lines = lab.wait_log("a", lambda ls: sum(x["path"] == "/echo?log=1" for x in ls) >= N)
    assert sum(x["path"] == "/echo?log=1" for x in lines) == N


def test_reset_counters_reaches_every_worker(lab):
    lab.get(lab.ns_a, VIP, 8080, "/echo", n=8, keepalive=False)
    assert admin(lab, lab.ns_a, "/reset_counters", "POST")["body"] == "OK\n"
    # the reply comes once every worker has zeroed its counters
    assert istio(lab, "a", "istio_requests", "istio_requests_total") == 0
    lab.get(lab.ns_a, VIP, 8080, "/echo", n=10, keepalive=False)
    got = poll(lambda: istio(lab, "a", "istio_requests", "istio_requests_total"),
               lambda v: v >= 10, timeout_s=5)
    assert got == 10


def test_drain_closes_every_workers_inbound_socket(lab):
    """Second to last: sidecar B has no inbound listener afterwards."""
    assert admin(lab, lab.ns_b, "/drain_listeners?inboundonly", "POST")["body"] == "OK\n"
    # ~15 connects from fresh source ports over 0.3 s: each reuseport socket gets some
    probe = lab.client(lab.ns_b, {"op": "wait", "host": "10.244.1.3", "port": 15006,
                                  "timeout_s": 0.3})
    assert not probe["ok"] and "refused" in probe["error"].lower()


def test_a_dead_worker_stops_the_sidecar_with_status_3(lab):
    """Last: sidecar B is gone afterwards."""
    main = lab.sidecar("b")
    kids = children(main.pid)
    assert len(kids) == 2
    os.kill(kids[0], signal.SIGKILL)
    assert main.wait(timeout=15) == 3
    # the main stopped (and reaped) the surviving worker before exiting
    assert not Path(f"/proc/{kids[1]}").exists()
    err = (lab.workdir / "b" / "sidecar.err").read_text()
    assert f"(pid {kids[0]}) exited with signal 9" in err
