"""Acceptance: statuses, bodies, flags and details of the sidecar's failure modes, on real sockets.

Two-pod netns lab (:func:`tests.proxy._pairlab.pair_lab`) with extra Services whose policies
(VirtualService / DestinationRule knobs, ENVOY.md §8) select the failure. The lab runs twice:
client sidecar A logs TEXT and server sidecar B JSON, then the other way round, and every check
reads the access log through :func:`meshlab.collectors.accesslog.parse_lines` (auto-detect).
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from _pairlab import B_IP, _services, pair_lab, poll

from meshlab.collectors.accesslog import parse_lines

RESET_PREFIX = "upstream connect error or disconnect/reset before headers. "
REFUSED_TF = "delayed connect error: Connection refused"


def _svc(name: str, vip: str, target_port: int = 8080) -> dict:
    return {"name": name, "namespace": "mark", "fqdn": f"{name}.mark.svc.cluster.local",
            "cluster_ip": vip,
            "ports": [{"port": 8080, "name": "http", "protocol": "http",
                       "target_port": target_port}],
            "endpoints": [{"ip": B_IP, "pod": "fortio-server-0"}]}


def _cluster(name: str) -> str:
    return f"outbound|8080||{name}.mark.svc.cluster.local"


CAPPED_PORT, BODY_LIMIT = 8081, 1024  # the buffer filter's port on A's outbound listener


VIPS = {"slow": "10.96.0.20", "abort": "10.96.0.21", "delay": "10.96.0.22",
        "retry5xx": "10.96.0.23", "pooled": "10.96.0.24", "blackhole": "10.96.0.25",
        "noretry": "10.96.0.26", "fortio": "10.96.0.12", "refused": "10.96.0.13",
        "capped": "10.96.0.27"}
BLACKHOLE_PORT = 15023  # SYNs dropped in B's raw table → connect timeout
SERVICES = _services() + [
    _svc("slow", VIPS["slow"]), _svc("abort", VIPS["abort"]), _svc("delay", VIPS["delay"]),
    _svc("retry5xx", VIPS["retry5xx"]), _svc("pooled", VIPS["pooled"]),
    _svc("blackhole", VIPS["blackhole"], BLACKHOLE_PORT), _svc("noretry", VIPS["noretry"], 15021),
    {**_svc("capped", VIPS["capped"]), "ports": [{"port": CAPPED_PORT, "name": "http",
                                                  "protocol": "http", "target_port": 8080}]}]
POLICIES = {
    "clusters": {_cluster("blackhole"): {"connect_timeout_s": 0.3},
                 _cluster("pooled"): {"http_idle_timeout_s": 0.5,
                                      "max_requests_per_connection": 2}},
    "routes": {_cluster("slow"): {"timeout_s": 0.5},
               _cluster("abort"): {"fault": {"abort": {"http_status": 418, "percent": 100}}},
               _cluster("delay"): {"fault": {"delay": {"fixed_delay_s": 0.3, "percent": 100}}},
               _cluster("retry5xx"): {"retry": {"num_retries": 2, "retry_on": "5xx"}},
               _cluster("noretry"): {"retry": {"num_retries": 0}}},
    "listeners": {"15001": {"http_filters": [{"name": "envoy.filters.http.buffer",
                                              "max_request_bytes": BODY_LIMIT,
                                              "port": CAPPED_PORT}]}},
}


@pytest.fixture(scope="module", params=["TEXT", "JSON"])
def lab(request):
    a_enc = request.param
    b_enc = "JSON" if a_enc == "TEXT" else "TEXT"
    common = {"services": SERVICES, "policies": POLICIES, "stats_inclusion_regexps": [".*"]}
    with pair_lab({"a": {**common, "access_log_encoding": a_enc},
                   "b": {**common, "access_log_encoding": b_enc}}) as lab:
        subprocess.run(["ip", "netns", "exec", lab.ns_b, "iptables", "-t", "raw", "-A",
                        "PREROUTING", "-p", "tcp", "--dport", str(BLACKHOLE_PORT), "--syn",
                        "-j", "DROP"], check=True, capture_output=True, timeout=10)
        lab.encodings = {"a": a_enc, "b": b_enc}
        yield lab


def records(lab, side: str) -> tuple[list[str], list[dict]]:
    path = lab.log_a if side == "a" else lab.log_b
    lines = path.read_text().splitlines() if path.exists() else []
    return lines, parse_lines(lines)


def wait_record(lab, side: str, pred, timeout_s: float = 5.0, count: int = 1) -> list[dict]:
    """The records of ``side`` matching ``pred`` once ``count`` of them are there."""
    def matching() -> list[dict]:
        lines, recs = records(lab, side)
        enc = lab.encodings[side]
        assert all(line.startswith("{" if enc == "JSON" else "[") for line in lines)
        return [r for r in recs if pred(r)]

    found = poll(matching, lambda f: len(f) >= count, timeout_s, interval_s=0.02)
    return found if len(found) >= count else []


def call(lab, name: str, path: str, headers: dict | None = None, method: str = "GET"):
    rid = str(uuid.uuid4())
    res = lab.client(lab.ns_a, {"op": "http", "host": VIPS[name], "port": 8080, "path": path,
                                "method": method, "headers": {"x-request-id": rid,
                                                              **(headers or {})}})
    return res, rid


def by_id(rid: str):
    return lambda r: r.get("request_id") == rid


def stat(lab, name: str) -> int:
    text = lab.client(lab.ns_a, {"op": "http", "host": "127.0.0.1", "port": 15000,
                                 "path": "/stats"})["body"]
    for line in text.splitlines():
        if line.startswith(name + ": "):
            return int(line.split(": ", 1)[1])
    return 0


def test_connect_refused_is_uf_urx_with_retried_body(lab):
    res, rid = call(lab, "refused", "/echo")
    body = (RESET_PREFIX + "retried and the latest reset reason: remote connection failure, "
            "transport failure reason: " + REFUSED_TF)
    assert (res["status"], res["body"]) == (503, body)
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_code"], rec["response_flags"]) == (503, "UF,URX")
    assert rec["response_code_details"] == ("upstream_reset_before_response_started{remote_"
                                            "connection_failure|delayed_connect_error:_Connection"
                                            "_refused}")
    assert rec["upstream_transport_failure_reason"] == "delayed_connect_error:_Connection_refused"
    assert rec["connection_termination_details"] is None and rec["bytes_sent"] == len(body)


def test_connect_refused_without_retries_is_plain_uf(lab):
    res, rid = call(lab, "noretry", "/echo")
    assert (res["status"], res["body"]) == (
        503, RESET_PREFIX + "reset reason: remote connection failure, transport failure "
        "reason: " + REFUSED_TF)
    [rec] = wait_record(lab, "a", by_id(rid))
    assert rec["response_flags"] == "UF"


def test_connect_timeout_is_uf_urx_connection_timeout(lab):
    before = stat(lab, f"cluster.{_cluster('blackhole')};.upstream_cx_connect_timeout")
    t0 = time.monotonic()
    res, rid = call(lab, "blackhole", "/echo")
    elapsed = time.monotonic() - t0
    assert (res["status"], res["body"]) == (
        503, RESET_PREFIX + "retried and the latest reset reason: connection timeout")
    assert 0.9 <= elapsed < 8  # 3 attempts × 0.3 s connect timeout (+ backoff)
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_flags"], rec["response_code_details"]) == \
        ("UF,URX", "upstream_reset_before_response_started{connection_timeout}")
    assert rec["upstream_transport_failure_reason"] is None
    after = stat(lab, f"cluster.{_cluster('blackhole')};.upstream_cx_connect_timeout")
    assert after - before == 3


@pytest.mark.parametrize("path", ["/close", "/reset"])
def test_upstream_reset_mid_request_is_uc_95_bytes(lab, path):
    res, rid = call(lab, "fortio", path)
    body = RESET_PREFIX + "reset reason: connection termination"
    assert (res["status"], res["body"], len(body)) == (503, body, 95)
    [rec_b] = wait_record(lab, "b", by_id(rid))  # the server sidecar saw the app go away
    assert (rec_b["response_code"], rec_b["response_flags"], rec_b["bytes_sent"]) == \
        (503, "UC", 95)
    assert rec_b["response_code_details"] == \
        "upstream_reset_before_response_started{connection_termination}"
    [rec_a] = wait_record(lab, "a", by_id(rid))  # the client sidecar only relays B's 503
    assert (rec_a["response_flags"], rec_a["response_code_details"]) == ("-", "via_upstream")


def test_upstream_garbage_is_upe_502(lab):
    res, rid = call(lab, "fortio", "/garbage")
    assert (res["status"], res["body"]) == (502, RESET_PREFIX + "reset reason: protocol error")
    [rec] = wait_record(lab, "b", by_id(rid))
    assert (rec["response_code"], rec["response_flags"], rec["response_code_details"]) == \
        (502, "UPE", "upstream_reset_before_response_started{protocol_error}")


def test_route_timeout_is_ut_504(lab):
    t0 = time.monotonic()
    res, rid = call(lab, "slow", "/echo?delay=3")
    assert (res["status"], res["body"]) == (504, "upstream request timeout")
    assert time.monotonic() - t0 < 2.5
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_flags"], rec["response_code_details"], rec["bytes_sent"]) == \
        ("UT", "response_timeout", 24)
    assert 450 <= rec["duration"] < 2500
    [rec_b] = wait_record(lab, "b", by_id(rid), timeout_s=6)  # A reset its upstream request
    assert "DC" in rec_b["response_flags"]


def test_client_leaving_during_a_stalled_body_is_dc_at_once(lab):
    """The response started, its body stalls upstream, the client gives up after 1 s: the
    sidecar notices the downstream close (Envoy's early-close detection), logs ``DC`` with the
    200 it had started, and resets the upstream request — it does not wait for the body."""
    rid = str(uuid.uuid4())
    t0 = time.monotonic()
    subprocess.run(["ip", "netns", "exec", lab.ns_a, "curl", "-s", "-o", "/dev/null", "-m", "1",
                    "-H", f"x-request-id: {rid}", f"http://{VIPS['fortio']}:8080/stall"],
                   capture_output=True, timeout=10, check=False)
    [rec] = wait_record(lab, "a", by_id(rid), timeout_s=4)
    assert time.monotonic() - t0 < 4  # the stall lasts 10 s
    assert (rec["response_code"], rec["response_flags"]) == (200, "DC")
    assert stat(lab, f"cluster.{_cluster('fortio')};.upstream_rq_active") == 0


def test_no_route_is_nr_404_empty(lab):
    res, rid = call(lab, "fortio", "example.com:443", method="CONNECT")
    assert (res["status"], res["body"], res["headers"]["content-length"]) == (404, "", "0")
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_flags"], rec["response_code_details"]) == ("NR", "route_not_found")


@pytest.mark.parametrize("headers,details", [
    ({"x-big": "a" * 70000}, "http1.headers_too_large"),
    ({f"x-h{i}": "v" for i in range(101)}, "http1.too_many_headers"),
])
def test_header_overflow_is_431_dpe(lab, headers, details):
    res, _ = call(lab, "fortio", "/echo", headers=headers)
    assert (res["status"], res["body"]) == (431, "Request Header Fields Too Large")
    recs = wait_record(lab, "a", lambda r: r["response_code_details"] == details)
    assert recs, "no 431 record"
    rec = recs[-1]
    assert (rec["method"], rec["path"], rec["protocol"], rec["response_code"],
            rec["response_flags"], rec["bytes_received"], rec["bytes_sent"]) == \
        (None, None, "HTTP/1.1", 431, "DPE", 0, 31)
    if lab.encodings["a"] == "TEXT":
        lines, _ = records(lab, "a")
        assert any(f'"- - HTTP/1.1" 431 DPE {details} - "-" 0 31 ' in ln for ln in lines)


def test_malformed_request_is_400_then_delayed_close(lab):
    out = lab.client(lab.ns_a, {"op": "raw", "host": VIPS["fortio"], "port": 8080,
                                "data": "GARBAGE\r\n\r\n", "timeout_s": 5})
    assert out["data"].startswith("HTTP/1.1 400 Bad Request\r\n")
    assert out["data"].endswith("\r\n\r\nBad Request") and "connection: close" in out["data"]
    assert out["eof"] and 0.8 <= out["waited_s"] < 3  # delayed_close_timeout 1 s
    recs = wait_record(lab, "a", lambda r: r["response_code"] == 400)
    assert (recs[-1]["response_flags"], recs[-1]["response_code_details"]) == \
        ("DPE", "http1.codec_error")


def _post(size: int, rid: str, close: bool = False) -> str:
    head = ["POST /echo HTTP/1.1", f"Host: capped:{CAPPED_PORT}", f"x-request-id: {rid}",
            f"Content-Length: {size}"] + (["Connection: close"] if close else [])
    return "\r\n".join(head) + "\r\n\r\n" + "b" * size


def test_body_over_the_buffer_limit_is_413_then_delayed_close(lab):
    """The buffer filter on A's outbound port 8081 holds 1024 body bytes: 1024 are forwarded;
    4096 get Envoy's 413 (no flag, ``request_payload_too_large``, ``downstream_rq_too_large``)
    with ``connection: close``, the connection closes, and B never sees the request."""
    ok_id, big_id = str(uuid.uuid4()), str(uuid.uuid4())
    ok = lab.client(lab.ns_a, {"op": "raw", "host": VIPS["capped"], "port": CAPPED_PORT,
                               "data": _post(BODY_LIMIT, ok_id, close=True), "timeout_s": 5})
    assert ok["data"].startswith("HTTP/1.1 200 OK\r\n") and ok["data"].endswith("b" * BODY_LIMIT)
    before = stat(lab, f"http.outbound_0.0.0.0_{CAPPED_PORT};.downstream_rq_too_large")
    out = lab.client(lab.ns_a, {"op": "raw", "host": VIPS["capped"], "port": CAPPED_PORT,
                                "data": _post(4 * BODY_LIMIT, big_id), "timeout_s": 5})
    assert out["data"].startswith("HTTP/1.1 413 Payload Too Large\r\n"), out["data"][:200]
    assert out["data"].endswith("\r\n\r\nPayload Too Large") and "connection: close" in out["data"]
    assert out["eof"] and out["waited_s"] < 3  # closed by the sidecar (delayed close, 1 s)
    [rec] = wait_record(lab, "a", by_id(big_id))
    assert (rec["response_code"], rec["response_flags"], rec["response_code_details"]) == \
        (413, "-", "request_payload_too_large")
    assert BODY_LIMIT < rec["bytes_received"] <= 4 * BODY_LIMIT
    assert stat(lab, f"http.outbound_0.0.0.0_{CAPPED_PORT};.downstream_rq_too_large") == \
        before + 1
    assert wait_record(lab, "b", by_id(ok_id))  # the forwarded one reached B …
    assert not [r for r in records(lab, "b")[1] if r.get("request_id") == big_id]  # … not this


def test_half_sent_request_does_not_block_others(lab):
    half = "GET /echo HTTP/1.1\r\nHost: fortio-server:8080\r\nx-slow: "
    out = lab.client(lab.ns_a, {"op": "raw", "host": VIPS["fortio"], "port": 8080,
                                "data": "GET /echo HTTP/1.1\r\nHost: fortio-server:8080\r\n"
                                        "Connection: close\r\n\r\n", "timeout_s": 5,
                                "hold": {"host": VIPS["fortio"], "port": 8080, "data": half}})
    assert out["data"].startswith("HTTP/1.1 200 OK\r\n") and out["eof"]
    assert out["waited_s"] < 3


def test_retry_exhaustion_is_urx_with_last_code(lab):
    res, rid = call(lab, "retry5xx", "/status/503")
    assert (res["status"], res["body"]) == (503, "app says 503")
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_code"], rec["response_flags"], rec["response_code_details"]) == \
        (503, "URX", "via_upstream")
    assert len(wait_record(lab, "b", by_id(rid), count=3)) == 3  # 1 try + 2 retries


def test_fault_abort_is_fi(lab):
    before = stat(lab, "http.outbound_0.0.0.0_8080;.fault.aborts_injected")
    res, rid = call(lab, "abort", "/echo")
    assert (res["status"], res["body"]) == (418, "fault filter abort")
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_code"], rec["response_flags"], rec["response_code_details"]) == \
        (418, "FI", "fault_filter_abort")
    assert stat(lab, "http.outbound_0.0.0.0_8080;.fault.aborts_injected") == before + 1
    assert not wait_record(lab, "b", by_id(rid), timeout_s=0.3)  # never left the client pod


def test_fault_delay_is_di_then_forwarded(lab):
    t0 = time.monotonic()
    res, rid = call(lab, "delay", "/echo")
    assert res["status"] == 200 and time.monotonic() - t0 >= 0.3
    [rec] = wait_record(lab, "a", by_id(rid))
    assert (rec["response_code"], rec["response_flags"], rec["response_code_details"]) == \
        (200, "DI", "via_upstream")
    assert rec["duration"] >= 300
    assert stat(lab, "http.outbound_0.0.0.0_8080;.fault.delays_injected") >= 1


def test_pool_idle_timeout_and_max_requests(lab):
    name = f"cluster.{_cluster('pooled')};."
    res = lab.get(lab.ns_a, VIPS["pooled"], 8080, "/echo", n=3)
    assert [r["status"] for r in res] == [200, 200, 200]
    assert stat(lab, name + "upstream_cx_max_requests") == 1  # 2 requests, then closed
    assert poll(lambda: stat(lab, name + "upstream_cx_idle_timeout"), lambda v: v >= 1,
                timeout_s=5) == 1
    assert stat(lab, name + "upstream_cx_total") == 2
