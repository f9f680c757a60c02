"""Socket options and keepalive on real sockets (getsockopt inside a private netns), and the
policy parser's listener additions."""

import socket
import struct

import pytest
from _private_netns import run_in_private_netns

from meshlab.errors import ConfigError
from meshlab.proxy.config.policy import (
    SOL_TCP,
    TCP_USER_TIMEOUT,
    ClusterPolicy,
    SocketOption,
    TcpKeepalive,
    parse_policies,
)
from meshlab.proxy.upstream import sockopts

UTO = SocketOption(SOL_TCP, TCP_USER_TIMEOUT, 1500)


def test_upstream_socket_gets_keepalive_and_prebind_options():
    def check():
        s = socket.socket()
        with s:
            sockopts.prepare_upstream(s, ClusterPolicy(
                tcp_keepalive=TcpKeepalive(probes=3, time_s=10, interval_s=None),
                socket_options=(UTO, SocketOption(SOL_TCP, TCP_USER_TIMEOUT, 99,
                                                  "STATE_LISTENING"))))
            return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    s.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT))
    ka, cnt, idle, intvl, uto = run_in_private_netns(check)
    # the LISTENING option is not applied to an upstream socket; unset interval = kernel's 75 s
    assert (ka, cnt, idle, intvl, uto) == (1, 3, 10, 75, 1500)


def test_default_policy_leaves_the_socket_alone():
    def check():
        with socket.socket() as s:
            sockopts.prepare_upstream(s, ClusterPolicy())
            return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    s.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT))
    assert run_in_private_netns(check) == (0, 0)


def test_listener_options_by_state_and_inherited_by_accepted_sockets():
    def check():
        lst = sockopts.listen_socket("127.0.0.1", 0, [
            SocketOption(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536, "STATE_PREBIND"),
            SocketOption(SOL_TCP, TCP_USER_TIMEOUT, 2500, "STATE_LISTENING")])
        with lst:
            lst.setblocking(True)
            cli = socket.create_connection(lst.getsockname(), timeout=5)
            acc, _ = lst.accept()
            with cli, acc:
                return (lst.getsockopt(SOL_TCP, TCP_USER_TIMEOUT),
                        acc.getsockopt(SOL_TCP, TCP_USER_TIMEOUT),
                        lst.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536)
    assert run_in_private_netns(check) == (2500, 2500, True)


def test_refused_option_raises_naming_it():
    def check():
        with socket.socket() as s:
            with pytest.raises(sockopts.SocketOptionError, match="level=6, name=9999"):
                sockopts.apply_options(s, [SocketOption(6, 9999, 1)], ("STATE_PREBIND",))
            # SO_LINGER needs a struct: an int value is refused, as Envoy would fail it
            with pytest.raises(sockopts.SocketOptionError):
                sockopts.apply_options(s, [SocketOption(socket.SOL_SOCKET, socket.SO_LINGER,
                                                        1)], ("STATE_PREBIND",))
            return struct.calcsize("ii")
    run_in_private_netns(check)


def test_policies_listeners_parse():
    pol = parse_policies({
        "listener_socket_options": [{"level": 6, "name": 18, "int_value": 1}],
        "listeners": {"15006": {"socket_options": [{"level": 6, "name": 18,
                                                     "int_value": 2}]}}})
    assert [o.int_value for o in pol.listener_options(15006)] == [1, 2]
    assert [o.int_value for o in pol.listener_options(15001)] == [1]
    assert pol.listener_options(15001)[0].state == "STATE_LISTENING"
    assert pol.listeners[15006][0].state == "STATE_PREBIND"  # Envoy's default state
    with pytest.raises(ConfigError, match=r'policies.listeners\["x"\]'):
        parse_policies({"listeners": {"x": {"socket_options": []}}})
    with pytest.raises(ConfigError, match=r'listeners\["15001"\].sockopts: unknown field'):
        parse_policies({"listeners": {"15001": {"sockopts": []}}})


def test_policies_buffer_filters_parse():
    """The smallest applicable limit wins (each buffer filter checks); the port selects."""
    buf = "envoy.filters.http.buffer"
    pol = parse_policies({"listeners": {"15001": {"http_filters": [
        {"name": buf, "max_request_bytes": 4096},
        {"name": buf, "max_request_bytes": 100, "port": 8080}]}}})
    assert (pol.max_request_bytes(15001, 8080), pol.max_request_bytes(15001, 9090),
            pol.max_request_bytes(15006, 8080)) == (100, 4096, None)
    where = r'policies.listeners\["15001"\].http_filters\[0\]'
    for bad, problem in (({"name": "envoy.filters.http.lua", "max_request_bytes": 1},
                          r"\.name: only envoy.filters.http.buffer"),
                         ({"name": buf}, r"\.max_request_bytes: missing"),
                         ({"name": buf, "max_request_bytes": 0}, r"\.max_request_bytes: .*>= 1"),
                         ({"name": buf, "max_request_bytes": 1, "port": 70000}, r"\.port: "),
                         ({"name": buf, "max_request_bytes": 1, "limit": 2},
                          r"\.limit: unknown field")):
        with pytest.raises(ConfigError, match=where + problem):
            parse_policies({"listeners": {"15001": {"http_filters": [bad]}}})
    with pytest.raises(ConfigError, match=r'http_filters: expected a .*list'):
        parse_policies({"listeners": {"15001": {"http_filters": {"name": buf}}}})
