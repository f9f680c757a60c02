"""Netlink readers and the namespace they live in (a scratch netns ``mltest-nl-<rand>``, no lab):
they read that namespace only, never the host's; deleting the namespace closes them (so it is
not kept alive), the next read is an error naming it, and a namespace re-created under the same
name is read again through a new socket."""

from __future__ import annotations

import os

import pytest

from meshlab.collectors.ctnetlink import CtnetlinkReader
from meshlab.collectors.sock_diag import SockDiagReader
from meshlab.envs.local.netns import NetnsShell, add_netns, delete_netns
from meshlab.envs.local.netns_socket import run_in_netns
from meshlab.errors import LabError

pytestmark = pytest.mark.lab


def _listen(netns: str, port: int):
    def make():
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock

    return run_in_netns(netns, make)


def test_reader_reads_its_namespace_and_lets_it_go(scratch):
    NetnsShell(scratch).run(["ip", "link", "set", "lo", "up"])
    own = os.stat("/proc/thread-self/ns/net").st_ino
    sockets, entries = SockDiagReader(scratch), CtnetlinkReader(scratch)
    with _listen(scratch, 18181):
        got = sockets.snapshot()
        assert [(s.state, s.local, s.peer) for s in got] == [("LISTEN", "127.0.0.1:18181",
                                                              "0.0.0.0:*")]
    assert entries.snapshot() == []  # no conntrack user in a fresh namespace
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    assert sockets.link.is_open and entries.link.is_open

    delete_netns(scratch)
    assert not sockets.link.is_open and not entries.link.is_open  # released first
    for reader in (sockets, entries):
        with pytest.raises(LabError, match=f"{scratch} is gone"):
            reader.snapshot()

    add_netns(scratch)  # "power-on": the same name, a new namespace
    NetnsShell(scratch).run(["ip", "link", "set", "lo", "up"])
    with _listen(scratch, 18182):
        assert [s.local for s in sockets.snapshot()] == ["127.0.0.1:18182"]
    assert sockets.link.opened == 2
    sockets.close()
    entries.close()
    assert not sockets.link.is_open
