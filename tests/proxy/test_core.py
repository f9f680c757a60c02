"""Unit tests of the sans-IO sidecar core: flags, local replies, retries, stats, access log."""

from __future__ import annotations

import json
import os

import h11
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlab.errors import ConfigError
from meshlab.proxy.accesslog import JSON_KEYS, format_json, format_text
from meshlab.proxy.config.sidecar import parse_config
from meshlab.proxy.flags import Flag, ResetReason, ResponseFlags, upstream_reset_reply
from meshlab.proxy.http import actions
from meshlab.proxy.http.core import HttpStream, StreamContext, protocol_error_stream
from meshlab.proxy.http.retry import backoff_delay_s
from meshlab.proxy.stats.metrics import PeerInfo, ProxyStats
from meshlab.proxy.stats.render import render_json, render_prometheus, render_text
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.router import Router

FQDN = "fortio-server-l2.mark.svc.cluster.local"
CLUSTER = f"outbound|8080||{FQDN}"


def make_config(endpoints=({"ip": "10.244.2.2"},), **extra):
    doc = {
        "pod": {"name": "fortio-server-0", "namespace": "mark", "ip": "10.244.1.2",
                "workload": "fortio-server", "app": "fortio-server"},
        "inbound": [{"port": 8080, "name": "http"}, {"port": 9000, "name": "tcp-echo"}],
        "services": [{"name": "fortio-server-l2", "namespace": "mark", "fqdn": FQDN,
                      "cluster_ip": "10.96.0.12",
                      "ports": [{"port": 8080, "name": "http", "target_port": 8080}],
                      "endpoints": list(endpoints)}],
        "stats_inclusion_regexps": [r"cluster\..*fortio.*", r"cluster\..*inbound.*",
                                    r"http\..*", r"listener\..*"],
    }
    doc.update(extra)
    return parse_config(doc)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env():
    config = make_config()
    store = StatsStore(StatsMatcher(config.stats_inclusion_regexps))
    stats = ProxyStats(store)
    clock = Clock()
    router = Router(config)

    def ctx(dst=("10.96.0.12", 8080), direction="outbound", retry="default", route_timeout=None):
        cluster = router.outbound(dst) if direction == "outbound" else router.inbound(dst)
        return StreamContext(cluster=cluster, router=router, stats=stats,
                             own_peer=PeerInfo.from_pod(config.pod), connect_timeout_s=10.0,
                             route_timeout_s=route_timeout,
                             retry=config.outbound_retry if retry == "default" else retry,
                             downstream_local=dst, downstream_remote=("10.244.1.2", 40000),
                             rng=lambda: 0.5, clock=clock, wall=lambda: 1700000000.123)

    return ctx, store, clock


def request(method=b"GET", target=b"/echo", headers=None, version=b"1.1"):
    hdrs = [(b"host", b"fortio-server-l2:8080"), (b"user-agent", b"fortio.org/fortio")]
    return h11.Request(method=method, target=target, headers=hdrs + list(headers or []),
                       http_version=version)


def test_happy_path_headers_and_log(env):
    ctx, store, clock = env
    s = HttpStream(ctx(), request())
    act = s.on_request_complete()
    assert isinstance(act, actions.Connect) and act.address == ("10.244.2.2", 8080)
    act = s.on_connected(("10.244.1.2", 51000))
    assert isinstance(act, actions.SendRequest)
    sent = dict(act.request.headers)
    assert sent[b"x-envoy-attempt-count"] == b"1"
    assert sent[b"x-forwarded-proto"] == b"http"
    rid = sent[b"x-request-id"].decode()
    assert len(rid) == 36
    clock.t += 0.003
    act = s.on_response_headers(h11.Response(status_code=200, headers=[
        (b"content-length", b"2"), (b"server", b"fortio")]))
    assert isinstance(act, actions.ForwardResponse)
    resp = dict(act.response.headers)
    assert resp[b"server"] == b"envoy"
    assert resp[b"x-envoy-upstream-service-time"] == b"3"
    s.on_response_body(2)
    assert isinstance(s.on_response_complete(), actions.Done)
    rec = s.finish()
    line = json.loads(format_json(rec))
    assert list(line) == list(JSON_KEYS)
    assert line["response_code"] == 200 and line["response_flags"] == "-"
    assert line["response_code_details"] == "via_upstream"
    assert line["request_id"] == rid and line["upstream_cluster"] == CLUSTER
    assert line["upstream_host"] == "10.244.2.2:8080" and line["bytes_sent"] == 2
    assert line["start_time"] == "2023-11-14T22:13:20.123Z"
    assert line["x_forwarded_for"] is None and line["route_name"] == "default"
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_200") == 1
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_2xx") == 1
    assert store.value("http.outbound_0.0.0.0_8080;.downstream_rq_2xx") == 1


def test_inbound_server_header_is_istio_envoy(env):
    ctx, _, _ = env
    s = HttpStream(ctx(("10.244.1.2", 8080), "inbound", retry=None),
                   request(headers=[(b"x-request-id", b"abc")]))
    act = s.on_request_complete()
    assert isinstance(act, actions.Connect) and act.bind_ip == "127.0.0.6"
    act = s.on_connected(("127.0.0.6", 40001))
    assert dict(act.request.headers)[b"x-request-id"] == b"abc"
    act = s.on_response_headers(h11.Response(status_code=503, headers=[]))
    assert dict(act.response.headers)[b"server"] == b"istio-envoy"
    s.on_response_complete()
    rec = s.finish()
    assert rec.response_code == 503 and rec.response_flags == "-"  # the app's own 503
    assert rec.upstream_cluster == "inbound|8080||"


def test_connect_refused_retries_then_uf_urx(env):
    ctx, store, _ = env
    s = HttpStream(ctx(), request())
    s.on_request_complete()
    tf = "delayed connect error: Connection refused"
    delays = []
    for _ in range(2):
        act = s.on_connect_failed(ResetReason.REMOTE_CONNECTION_FAILURE, tf)
        assert isinstance(act, actions.Backoff)
        delays.append(act.delay_s)
        assert isinstance(s.on_backoff_elapsed(), actions.Connect)
    assert delays == [0.0125, 0.0375]  # rng 0.5 × 25 ms × (2^n - 1)
    act = s.on_connect_failed(ResetReason.REMOTE_CONNECTION_FAILURE, tf)
    assert isinstance(act, actions.SendLocalReply) and act.response.status_code == 503
    assert act.body == (b"upstream connect error or disconnect/reset before headers. retried and "
                        b"the latest reset reason: remote connection failure, transport failure "
                        b"reason: delayed connect error: Connection refused")
    rec = s.finish()
    assert rec.response_flags == "UF,URX"
    assert rec.response_code_details == ("upstream_reset_before_response_started{remote_connection_"
                                         "failure|delayed_connect_error:_Connection_refused}")
    assert rec.upstream_transport_failure_reason == "delayed_connect_error:_Connection_refused"
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_retry") == 2
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_503") == 1


def test_connect_failure_without_retry_is_uf(env):
    ctx, _, _ = env
    s = HttpStream(ctx(retry=None), request())
    s.on_request_complete()
    act = s.on_connect_failed(ResetReason.CONNECTION_TIMEOUT)
    assert act.body == (b"upstream connect error or disconnect/reset before headers. "
                        b"reset reason: connection timeout")
    assert s.finish().response_flags == "UF"


def test_upstream_close_mid_request_is_uc_95_bytes(env):
    ctx, _, _ = env
    s = HttpStream(ctx(), request())
    s.on_request_complete()
    s.on_connected(("10.244.1.2", 5000))
    act = s.on_upstream_reset(ResetReason.CONNECTION_TERMINATION)  # not retried by Istio default
    assert isinstance(act, actions.SendLocalReply) and act.response.status_code == 503
    assert len(act.body) == 95
    rec = s.finish()
    assert (rec.response_flags, rec.bytes_sent) == ("UC", 95)
    assert rec.response_code_details == "upstream_reset_before_response_started{connection_termination}"


def test_upstream_close_after_headers_resets_downstream(env):
    ctx, _, _ = env
    s = HttpStream(ctx(), request())
    s.on_request_complete()
    s.on_connected(None)
    s.on_response_headers(h11.Response(status_code=200, headers=[(b"content-length", b"10")]))
    act = s.on_upstream_reset(ResetReason.CONNECTION_TERMINATION)
    assert isinstance(act, actions.ResetDownstream)
    rec = s.finish()
    assert (rec.response_code, rec.response_flags) == (200, "UC")
    assert rec.response_code_details.startswith("upstream_reset_after_response_started")


def test_no_endpoints_is_uh(env):
    ctx, _store, _ = env
    config = make_config(endpoints=())
    c = ctx()
    c.cluster = Router(config).outbound(("10.96.0.12", 8080))
    s = HttpStream(c, request())
    act = s.on_request_complete()
    assert act.response.status_code == 503 and act.body == b"no healthy upstream"
    rec = s.finish()
    assert (rec.response_flags, rec.response_code_details, rec.upstream_host) == \
        ("UH", "no_healthy_upstream", None)


def test_route_timeout_is_ut_504(env):
    ctx, store, _ = env
    s = HttpStream(ctx(route_timeout=1.0), request())
    s.on_request_complete()
    s.on_connected(None)
    act = s.on_route_timeout()
    assert act.response.status_code == 504 and act.body == b"upstream request timeout"
    rec = s.finish()
    assert (rec.response_flags, rec.response_code_details) == ("UT", "response_timeout")
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_timeout") == 1


def test_connect_method_has_no_route(env):
    ctx, store, _ = env
    s = HttpStream(ctx(), request(method=b"CONNECT", target=b"example.com:443"))
    act = s.on_request_complete()
    assert act.response.status_code == 404 and act.body == b""
    assert dict(act.response.headers)[b"content-length"] == b"0"
    rec = s.finish()
    assert (rec.response_flags, rec.response_code_details) == ("NR", "route_not_found")
    assert store.value("http.outbound_0.0.0.0_8080;.no_route") == 1


def test_malformed_request_is_dpe(env):
    ctx, _, _ = env
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GARBAGE\r\n\r\n")
    with pytest.raises(h11.RemoteProtocolError) as err:
        conn.next_event()
    stream, reply = protocol_error_stream(ctx(), err.value.error_status_hint)
    assert reply.response.status_code == 400 and reply.body == b"Bad Request" and reply.close
    rec = stream.finish()
    assert (rec.response_flags, rec.method, rec.response_code_details) == \
        ("DPE", None, "http1.codec_error")
    assert " 400 DPE http1.codec_error " in format_text(rec)


def test_downstream_close_is_dc_code_0(env):
    ctx, _, _ = env
    s = HttpStream(ctx(), request())
    s.on_request_complete()
    s.on_connected(None)
    s.on_downstream_closed()
    rec = s.finish()
    assert (rec.response_code, rec.response_flags, rec.response_code_details) == \
        (0, "DC", "downstream_remote_disconnect")


def test_http10_is_refused_426(env):
    ctx, _, _ = env
    s = HttpStream(ctx(), request(version=b"1.0"))
    act = s.on_request_complete()
    assert act.response.status_code == 426 and act.close


def test_passthrough_for_unknown_destination(env):
    ctx, _, _ = env
    c = ctx(("93.184.216.34", 8080))
    assert (c.cluster.name, c.cluster.protocol, c.cluster.route_name) == \
        ("PassthroughCluster", "http", "allow_any")
    c = ctx(("93.184.216.34", 5432))
    assert (c.cluster.name, c.cluster.protocol) == ("PassthroughCluster", "tcp")
    # a pod IP of a known service uses the service's cluster
    assert ctx(("10.244.2.2", 8080)).cluster.name == CLUSTER


def test_round_robin_prefers_untried_hosts():
    config = make_config(endpoints=({"ip": "10.244.2.2"}, {"ip": "10.244.3.2"}))
    router = Router(config)
    cluster = router.outbound(("10.96.0.12", 8080))
    picks = [router.pick(cluster) for _ in range(4)]
    assert picks == [("10.244.2.2", 8080), ("10.244.3.2", 8080)] * 2
    assert router.pick(cluster, {("10.244.2.2", 8080)}) == ("10.244.3.2", 8080)


def test_backoff_is_capped_at_250ms():
    config = make_config()
    assert backoff_delay_s(10, config.outbound_retry, lambda: 0.999999) < 0.25


def test_flags_render():
    f = ResponseFlags(Flag.URX, Flag.UF)
    assert str(f) == "UF,URX" and f.long() == "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    assert str(ResponseFlags()) == "-"
    assert len(upstream_reset_reply(ResetReason.CONNECTION_TERMINATION).body) == 95


def test_stats_matcher_and_renderers(env):
    ctx, store, clock = env
    for code in (200, 200, 503):
        s = HttpStream(ctx(), request())
        s.on_request_complete()
        s.on_connected(None)
        clock.t += 0.002
        s.on_response_headers(h11.Response(status_code=code, headers=[]))
        s.on_response_complete()
        s.finish()
    store.counter("cluster.outbound|9|ignored;.upstream_rq_total").inc()  # rejected by matcher
    assert store.get("cluster.outbound|9|ignored;.upstream_rq_total") is None
    store.flush()
    text = render_text(store)
    assert f"cluster.{CLUSTER};.upstream_rq_200: 2\n" in text
    assert "server.state: 0\n" in text and "listener_manager.workers_started: 1\n" in text
    lines = text.splitlines()
    hist = next(ln for ln in lines if ln.startswith(f"cluster.{CLUSTER};.upstream_rq_time:"))
    assert hist.count("P") == 10 and "P99.9(" in hist and "P100(" in hist
    doc = json.loads(render_json(store))
    assert doc["stats"][-1]["histograms"]["supported_quantiles"][-1] == 100
    prom = render_prometheus(store)
    assert (f'envoy_cluster_upstream_rq{{response_code="200",cluster_name="{CLUSTER}"}} 2'
            in prom)
    families = {f.name: f for f in text_string_to_metric_families(prom)}
    total = families["istio_requests"]  # parser strips _total from counters
    samples = [s for s in total.samples if s.name == "istio_requests_total"]
    assert sum(s.value for s in samples) == 3
    labels = list(samples[0].labels)
    assert labels[0] == "reporter" and labels[-2:] == ["response_flags",
                                                       "connection_security_policy"]
    assert len(labels) == 25 and samples[0].labels["reporter"] == "source"
    dur = families["istio_request_duration_milliseconds"]
    count = [s for s in dur.samples if s.name.endswith("_count")]
    assert sum(s.value for s in count) == 3
    buckets = [s for s in dur.samples if s.name.endswith("_bucket")]
    assert {s.labels["le"] for s in buckets} >= {"0.5", "1", "5", "3600000", "+Inf"}
    assert "envoy_cluster_upstream_rq_time_bucket" in prom
    store.reset_counters()
    assert store.value(f"cluster.{CLUSTER};.upstream_rq_200") == 0


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"services\[0\]\.ports\[0\]\.port"):
        make_config(services=[{"name": "a", "namespace": "b", "fqdn": "a.b", "cluster_ip":
                               "10.0.0.1", "ports": [{"port": "x", "name": "http"}]}])
    with pytest.raises(ConfigError, match=r"pod\.ip"):
        parse_config({"pod": {"name": "a", "namespace": "b", "ip": "nope"}})
    with pytest.raises(ConfigError, match="stats_inclusion_regexps"):
        make_config(stats_inclusion_regexps=["("])
    cfg = make_config(route_timeout_s=0)
    assert cfg.route_timeout_s is None and cfg.connect_timeout_s == 10.0
    assert cfg.inbound_port(9000).protocol == "tcp"
    assert cfg.concurrency == 2  # Istio's sidecar default
    for bad in (-1, 65, "2", True):
        with pytest.raises(ConfigError, match=r"^concurrency: expected an integer"):
            make_config(concurrency=bad)
    assert make_config(concurrency=0).concurrency == len(os.sched_getaffinity(0))
