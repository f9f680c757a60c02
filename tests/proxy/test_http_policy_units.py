"""Unit tests of the sans-IO HTTP policy pieces: VS retries/timeouts/faults, head limits, logs."""

from __future__ import annotations

import h11
import pytest

from meshlab.collectors.accesslog import parse_lines
from meshlab.proxy.accesslog import format_json, format_text
from meshlab.proxy.config.sidecar import parse_config
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.http import actions
from meshlab.proxy.http.core import HttpStream, StreamContext, protocol_error_stream
from meshlab.proxy.http.limits import HeadMeter
from meshlab.proxy.http.route import request_settings, route_defaults
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.router import Router

FQDN = "fortio-server-l2.mark.svc.cluster.local"
CLUSTER = f"outbound|8080||{FQDN}"
HTTP = "http.outbound_0.0.0.0_8080;."


def make(policies=None, **extra):
    doc = {
        "pod": {"name": "c-0", "namespace": "mark", "ip": "10.244.1.2"},
        "services": [{"name": "fortio-server-l2", "namespace": "mark", "fqdn": FQDN,
                      "cluster_ip": "10.96.0.12",
                      "ports": [{"port": 8080, "name": "http", "target_port": 8080}],
                      "endpoints": [{"ip": "10.244.2.2"}, {"ip": "10.244.2.3"}]}],
        "stats_inclusion_regexps": [".*"],
        "policies": policies or {},
    }
    doc.update(extra)
    config = parse_config(doc)
    store = StatsStore(StatsMatcher(config.stats_inclusion_regexps))
    router = Router(config)
    cluster = router.outbound(("10.96.0.12", 8080))
    rd = route_defaults(config, cluster)
    ctx = StreamContext(cluster=cluster, router=router, stats=ProxyStats(store),
                        own_peer=PeerInfo.from_pod(config.pod),
                        connect_timeout_s=rd.connect_timeout_s,
                        route_timeout_s=rd.route_timeout_s, retry=rd.retry,
                        downstream_local=("10.96.0.12", 8080),
                        downstream_remote=("10.244.1.2", 40000), rng=lambda: 0.5,
                        wall=lambda: 1700000000.123)
    return ctx, store, rd


def request(headers=()):
    return h11.Request(method=b"GET", target=b"/x",
                       headers=[(b"host", b"fortio-server-l2:8080"), *headers])


def route(**rp):
    return {"routes": {CLUSTER: rp}}


def test_policy_overrides_connect_and_route_timeout():
    _, _, rd = make({"clusters": {CLUSTER: {"connect_timeout_s": 0.25}},
                     "routes": {CLUSTER: {"timeout_s": 1.5}}})
    assert (rd.connect_timeout_s, rd.route_timeout_s) == (0.25, 1.5)
    _, _, rd = make()
    assert (rd.connect_timeout_s, rd.route_timeout_s) == (10.0, None)
    assert rd.retry is not None and rd.retry.num_retries == 2


def test_request_headers_override_timeouts_and_are_not_forwarded():
    ctx, _, _ = make(route(timeout_s=2.0))
    s = HttpStream(ctx, request([(b"x-envoy-upstream-rq-timeout-ms", b"300"),
                                 (b"x-envoy-upstream-rq-per-try-timeout-ms", b"100"),
                                 (b"x-envoy-max-retries", b"5")]))
    assert (s.timeouts.timeout_s, s.timeouts.per_try_timeout_s) == (0.3, 0.1)
    assert s.retry.policy.num_retries == 5
    s.on_request_complete()
    sent = dict(s.on_connected(None).request.headers)
    assert not any(k.startswith(b"x-envoy-upstream-rq") or k == b"x-envoy-max-retries"
                   for k in sent)
    timeouts, _ = request_settings({b"x-envoy-upstream-rq-per-try-timeout-ms": b"5000"}, 1.0, None)
    assert timeouts.per_try_timeout_s is None  # not below the route timeout: ignored


def test_vs_retry_on_5xx_retries_responses_then_urx_with_last_code():
    ctx, store, _ = make(route(retry={"num_retries": 2, "retry_on": "5xx"}))
    s = HttpStream(ctx, request())
    act = s.on_request_complete()
    for attempt in (1, 2, 3):
        assert isinstance(act, actions.Connect)
        sent = dict(s.on_connected(None).request.headers)
        assert sent[b"x-envoy-attempt-count"] == str(attempt).encode()
        act = s.on_response_headers(h11.Response(status_code=503, headers=[]))
        if attempt < 3:
            assert isinstance(act, actions.Backoff)
            act = s.on_backoff_elapsed()
    assert isinstance(act, actions.ForwardResponse) and act.response.status_code == 503
    s.on_response_complete()
    rec = s.finish()
    assert (rec.response_code, rec.response_flags, rec.response_code_details) == \
        (503, "URX", "via_upstream")
    assert store.value(f"cluster.{CLUSTER};.retry.upstream_rq_503") == 2
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_retry") == 2
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_retry_limit_exceeded") == 1


def test_retriable_status_codes_from_numeric_retry_on():
    ctx, _, rd = make(route(retry={"num_retries": 1, "retry_on": "gateway-error,409"}))
    assert rd.retry.retriable_status_codes == frozenset({409})
    assert "retriable-status-codes" in rd.retry.retry_on
    s = HttpStream(ctx, request())
    s.on_request_complete()
    s.on_connected(None)
    assert isinstance(s.on_response_headers(h11.Response(status_code=409, headers=[])),
                      actions.Backoff)
    s.on_backoff_elapsed()
    s.on_connected(None)
    act = s.on_response_headers(h11.Response(status_code=500, headers=[]))  # not a gateway error
    assert isinstance(act, actions.ForwardResponse)
    s.on_response_complete()
    assert s.finish().response_flags == "-"  # 500 was not retriable: no URX


def test_reset_retried_on_5xx_policy_and_overflow_never():
    ctx, _, _ = make(route(retry={"num_retries": 1, "retry_on": "5xx"}))
    s = HttpStream(ctx, request())
    s.on_request_complete()
    s.on_connected(None)
    assert isinstance(s.on_upstream_reset(ResetReason.CONNECTION_TERMINATION), actions.Backoff)
    s.on_backoff_elapsed()
    act = s.on_connect_failed(ResetReason.OVERFLOW)
    assert act.response.status_code == 503
    assert dict(act.response.headers)[b"x-envoy-overloaded"] == b"true"
    assert act.body.endswith(b"retried and the latest reset reason: overflow")
    assert s.finish().response_flags == "UO"


def test_per_try_timeout_retries_then_ut_504_with_details():
    ctx, store, _ = make(route(retry={"num_retries": 1, "retry_on": "5xx",
                                      "per_try_timeout_s": 0.2}))
    s = HttpStream(ctx, request())
    assert s.timeouts.per_try_timeout_s == 0.2
    s.on_request_complete()
    s.on_connected(None)
    assert isinstance(s.on_per_try_timeout(), actions.Backoff)
    s.on_backoff_elapsed()
    s.on_connected(None)
    act = s.on_per_try_timeout()
    assert act.response.status_code == 504 and act.body == b"upstream request timeout"
    rec = s.finish()
    assert (rec.response_flags, rec.response_code_details) == ("UT,URX",
                                                                "upstream_per_try_timeout")
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_per_try_timeout") == 2


def test_timeout_alt_response_is_204_empty():
    ctx, _, _ = make(route(timeout_s=1.0))
    s = HttpStream(ctx, request([(b"x-envoy-upstream-rq-timeout-alt-response", b"")]))
    s.on_request_complete()
    s.on_connected(None)
    act = s.on_route_timeout()
    assert act.response.status_code == 204 and act.body == b""
    assert b"content-length" not in dict(act.response.headers)
    rec = s.finish()
    assert (rec.response_code, rec.response_flags, rec.response_code_details) == \
        (204, "UT", "response_timeout")


def test_fault_abort_and_delay_with_stats():
    ctx, store, _ = make(route(fault={"abort": {"http_status": 418, "percent": 100},
                                      "delay": {"fixed_delay_s": 0.5, "percent": 100}}))
    s = HttpStream(ctx, request())
    act = s.on_request_complete()
    assert isinstance(act, actions.DelayRequest) and act.delay_s == 0.5
    assert store.value(HTTP + "fault.active_faults") == 1
    act = s.on_fault_delay_elapsed()
    assert act.response.status_code == 418 and act.body == b"fault filter abort"
    rec = s.finish()
    assert (rec.response_flags, rec.response_code_details) == ("DI,FI", "fault_filter_abort")
    assert store.value(HTTP + "fault.delays_injected") == 1
    assert store.value(HTTP + "fault.aborts_injected") == 1
    assert store.value(HTTP + "fault.active_faults") == 0
    assert store.value(HTTP + "rq_total") in (0, None)  # the router never ran


@pytest.mark.parametrize("percent,chosen", [(49.0, False), (51.0, True), (0.0, False)])
def test_fault_percent_uses_the_rng(percent, chosen):
    ctx, _, _ = make(route(fault={"abort": {"http_status": 503, "percent": percent}}))
    act = HttpStream(ctx, request()).on_request_complete()  # rng() == 0.5 → 50 %
    assert isinstance(act, actions.SendLocalReply) is chosen


def test_head_meter_limits_bytes_and_count():
    m = HeadMeter(60 * 1024, 100)
    head = b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x: " + b"a" * 1000 + b"\r\n"
    assert m.feed(head) is None
    over = None
    for _ in range(70):  # dripped in 1 KB pieces
        over = over or m.feed(b"a" * 1024)
    assert over is not None and (over.status, over.details) == (431, "http1.headers_too_large")
    m.reset()
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101))
    reply = m.feed(many)
    assert (reply.status, reply.details, reply.body) == \
        (431, "http1.too_many_headers", "Request Header Fields Too Large")
    m.reset()
    assert m.feed(b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(100))
                  + b"\r\n") is None


def test_431_log_line_matches_envoy():
    ctx, _, _ = make()
    stream, reply = protocol_error_stream(ctx, HeadMeter(10, 100).feed(b"GET /" + b"a" * 20))
    assert reply.response.status_code == 431 and reply.close
    line = format_text(stream.finish())
    assert '"- - HTTP/1.1" 431 DPE http1.headers_too_large - "-" 0 31 ' in line


def test_text_and_json_parse_to_the_same_record():
    ctx, _, _ = make()
    s = HttpStream(ctx, request([(b"user-agent", b"curl/8 (x)"), (b"x-request-id", b"r-1")]))
    s.on_request_complete()
    act = s.on_connect_failed(ResetReason.REMOTE_CONNECTION_FAILURE,
                              "delayed connect error: Connection refused")
    assert isinstance(act, actions.Backoff)
    rec = s.finish()
    text, js = format_text(rec), format_json(rec)
    assert text.startswith("[2023-11-14T22:13:20.123Z] ")
    parsed = parse_lines(["noise", text, js])
    assert len(parsed) == 2 and parsed[0] == parsed[1]
    assert parsed[0]["user_agent"] == "curl/8 (x)"
    assert parsed[0]["upstream_transport_failure_reason"] == \
        "delayed_connect_error:_Connection_refused"


def test_config_defaults_text_and_limits():
    config = parse_config({"pod": {"name": "p", "namespace": "n", "ip": "10.0.0.1"}})
    assert config.access_log_encoding == "TEXT"
    assert (config.max_request_headers_kb, config.max_headers_count,
            config.delayed_close_timeout_s) == (60, 100, 1.0)
