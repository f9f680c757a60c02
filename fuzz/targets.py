"""The fuzz targets: one function per harness taking the fuzzer's bytes, raising only for a
crash (an exception other than the target's documented error types) — shared by the atheris
harnesses (``fuzz/fuzz_*.py``) and the corpus replay in CI (``tests/fuzz/``).

Targets: the sidecar's downstream request codec (:class:`~meshlab.proxy.http.codec.ServerCodec`;
malformed input must end as ``h11.RemoteProtocolError``, which the HCM turns into Envoy's
400/431), its upstream response parser (:class:`~meshlab.proxy.upstream.codec.ResponseParser`;
``UpstreamProtocolError``/``UpstreamClosed``), the admin API's query handling
(:func:`~meshlab.proxy.admin.endpoints.admin_response`: any input gets a reply), the manifest
loader (YAML → model; a :class:`~meshlab.errors.ConfigError` naming the file) and the
``sidecar.json`` loader (:func:`~meshlab.proxy.config.sidecar.load_config`; a ``ConfigError``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h11

from meshlab.errors import ConfigError
from meshlab.manifests.loader import load_topology
from meshlab.proxy.admin.endpoints import AdminContext, admin_response
from meshlab.proxy.admin.server import init_cluster_stats
from meshlab.proxy.admin.state import ServerState
from meshlab.proxy.config.sidecar import load_config, parse_config
from meshlab.proxy.http.codec import ServerCodec
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.codec import ResponseParser, UpstreamClosed, UpstreamProtocolError

ROOT = Path(__file__).resolve().parents[1]
BASE_MANIFESTS = ROOT / "manifests" / "fortio-layered"
MAX_HEAD_BYTES = 60 * 1024  # Istio's max_request_headers_kb
MAX_EVENTS = 64


class Crash(AssertionError):
    """A target broke its contract (not an exception type it documents)."""


def request_codec(data: bytes) -> None:
    """Feed ``data`` to a server codec in two chunks, then EOF; read every event."""
    codec = ServerCodec(MAX_HEAD_BYTES)
    cut = data[0] % (len(data) + 1) if data else 0
    try:
        for chunk in (data[:cut], data[cut:], b""):
            codec.receive_data(chunk)
            for _ in range(MAX_EVENTS):
                event = codec.next_event()
                if event is h11.NEED_DATA or type(event) is h11.ConnectionClosed:
                    break
                if type(event) is h11.EndOfMessage and not codec.start_next_cycle():
                    break
    except h11.RemoteProtocolError:
        return  # the HCM's 400 DPE / 431


def response_parser(data: bytes) -> None:
    """Feed ``data`` as the response to a GET (or a HEAD, by the first byte), then EOF."""
    parser = ResponseParser()
    parser.expect(b"HEAD" if data[:1] == b"H" else b"GET")
    try:
        parser.feed(data[1:] or b"x")
        parser.feed(b"")
    except (UpstreamProtocolError, UpstreamClosed):
        return


_ADMIN: AdminContext | None = None


def _admin() -> AdminContext:
    global _ADMIN  # built once: a sidecar's admin state
    if _ADMIN is None:
        config = parse_config({
            "pod": {"name": "fuzz-0", "namespace": "mark", "ip": "10.244.1.2",
                    "workload": "fuzz", "app": "fuzz"},
            "inbound": [{"port": 8080, "name": "http"}],
            "services": [{"name": "fortio-server", "namespace": "mark",
                          "fqdn": "fortio-server.mark.svc.cluster.local",
                          "cluster_ip": "10.96.0.12",
                          "ports": [{"port": 8080, "name": "http", "target_port": 8080}],
                          "endpoints": [{"ip": "10.244.1.3"}]}],
            "stats_inclusion_regexps": [r"cluster\..*fortio.*"]})
        stats = ProxyStats(StatsStore(StatsMatcher(config.stats_inclusion_regexps)))
        _ADMIN = AdminContext(stats, config, ServerState(
            stats.store, clusters=init_cluster_stats(config, stats), listeners=3),
            on_quit=lambda: None, on_drain=lambda inbound, graceful: None)
    return _ADMIN


def admin_query(data: bytes) -> None:
    """``<method> <target>`` from ``data`` (latin-1) to the admin API; mutations are GETs here
    (refused with 400), so the shared state stays as it was."""
    text = data.decode("latin-1")
    method, _, target = text.partition(" ")
    reply = admin_response("GET" if method == "POST" else method or "GET", target or "/", _admin())
    if not isinstance(reply.status, int) or not isinstance(reply.body, bytes):
        raise Crash(f"admin reply is not a status and bytes: {reply!r}")


_TMP = Path(tempfile.mkdtemp(prefix="meshlab-fuzz-"))


def manifest_loader(data: bytes) -> None:
    """``data`` as an overlay file on the base lab: it loads, or a ConfigError names a file."""
    path = _TMP / "zz-fuzz.yaml"
    path.write_bytes(data)
    try:
        load_topology([BASE_MANIFESTS, _TMP])
    except ConfigError as exc:
        if ".yaml" not in str(exc):
            raise Crash(f"manifest error names no file: {exc}") from exc


def sidecar_config(data: bytes) -> None:
    """``data`` as a ``sidecar.json``: it loads, or a ConfigError."""
    path = _TMP / "sidecar.json"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError:
        return


TARGETS = {"request_codec": request_codec, "response_parser": response_parser,
           "admin_query": admin_query, "manifest_loader": manifest_loader,
           "sidecar_config": sidecar_config}
