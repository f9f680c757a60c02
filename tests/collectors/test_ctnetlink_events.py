"""The event-kept conntrack table against ``conntrack -L`` in a scratch netns (real kernel).

A TCP connection over the namespace's loopback goes ESTABLISHED → CLOSE_WAIT → TIME_WAIT and is
then deleted with ``conntrack -D``: the table follows it from events alone (one walk, the first
dump), states exactly as ``conntrack -L`` prints them and timeouts within 2 s. Entries from
before the subscription (no event extension) are asked for one by one. A UDP entry refreshed by
a packet without an event shows the documented difference until a forced resync makes the table
equal a dump again; lost events (a tiny receive buffer, ``ENOBUFS``) make a resync whose result
is still right; an entry that expires without a ``DESTROY`` leaves the table without a walk.
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter

import pytest

from meshlab.collectors import conntrack
from meshlab.collectors.conntrack import ConntrackEntry
from meshlab.collectors.ctnetlink import CtnetlinkReader
from meshlab.envs.local.netns import NetnsShell
from meshlab.envs.local.netns_socket import run_in_netns
from meshlab.polling import wait_until

pytestmark = pytest.mark.lab
PORT = 18201
HOUR_S = 3600.0  # resync_s that never comes within a test


def _track(netns: str) -> NetnsShell:
    """Loopback up and conntrack hooked in (a rule that uses it): a shell of the netns."""
    shell = NetnsShell(netns)
    shell.run(["ip", "link", "set", "lo", "up"])
    shell.run(["iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"])
    return shell


def _pair(netns: str) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) TCP pair over the namespace's loopback."""
    def make() -> tuple[socket.socket, socket.socket]:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", PORT))
            listener.listen()
            client = socket.create_connection(("127.0.0.1", PORT))
            return client, listener.accept()[0]

    return run_in_netns(netns, make)


def _key(entry: ConntrackEntry) -> str:
    return repr(dataclasses.replace(entry, timeout_s=0))


def _agree(reader: CtnetlinkReader, shell: NetnsShell, state: str | None,
           slack_s: int = 2) -> list[ConntrackEntry]:
    """Wait until the table and ``conntrack -L`` list the same entries (timeouts aside) and
    the test connection is in ``state`` (None: gone); check timeouts within ``slack_s``."""
    def settled(got: tuple[list[ConntrackEntry], list[ConntrackEntry]]) -> bool:
        kept, listed = got
        states = [e.state for e in listed if e.dport == PORT]
        return (Counter(map(_key, kept)) == Counter(map(_key, listed))
                and states == ([state] if state else []))

    kept, listed = wait_until(lambda: (reader.snapshot(), conntrack.snapshot(shell)), settled,
                              timeout_s=10, what=f"table == conntrack -L, {state}")
    timeouts = {_key(e): e.timeout_s for e in listed}
    for entry in kept:
        assert abs(entry.timeout_s - timeouts[_key(entry)]) <= slack_s, (entry, listed)
    return kept


def test_events_follow_a_connection_to_its_deletion(scratch):
    shell = _track(scratch)
    reader = CtnetlinkReader(scratch, resync_s=HOUR_S)
    assert reader.snapshot() == [] and reader.walks == 1
    client, server = _pair(scratch)
    with client, server:
        _agree(reader, shell, "ESTABLISHED")
        client.shutdown(socket.SHUT_WR)  # FIN from the client, acknowledged
        _agree(reader, shell, "CLOSE_WAIT")
        server.close()
        _agree(reader, shell, "TIME_WAIT")
    shell.run(["conntrack", "-D", "-p", "tcp", "--dport", str(PORT)])
    _agree(reader, shell, None)
    assert reader.walks == 1 and reader.table.untracked == 0, reader  # events alone
    reader.close()


def test_entries_from_before_the_subscription_are_asked_for(scratch):
    shell = _track(scratch)
    client, server = _pair(scratch)  # no listener yet: the entry may send no events
    reader = CtnetlinkReader(scratch, resync_s=HOUR_S)
    with client, server:
        _agree(reader, shell, "ESTABLISHED")
        assert reader.table.untracked == 1
        client.shutdown(socket.SHUT_WR)
        _agree(reader, shell, "CLOSE_WAIT")
        server.close()
        _agree(reader, shell, "TIME_WAIT")
    assert reader.walks == 1 and reader.gets >= 2, reader
    reader.close()


def _udp_from(netns: str, sport: int = 0) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", sport))
        return sock

    return run_in_netns(netns, make)


def test_forced_resync_equals_a_dump(scratch):
    _track(scratch)
    reader = CtnetlinkReader(scratch, resync_s=HOUR_S)
    reader.snapshot()
    with _udp_from(scratch) as udp:
        udp.sendto(b"x", ("127.0.0.1", 9))  # NEW: [UNREPLIED], 30 s
        first = wait_until(reader.snapshot, lambda got: len(got) == 1, timeout_s=5,
                           what="the UDP entry")[0]
        wait_until(reader.snapshot, lambda got: got[0].timeout_s <= first.timeout_s - 3,
                   timeout_s=10, what="the kept timeout counting down")
        udp.sendto(b"x", ("127.0.0.1", 9))  # refreshes the timeout, sends no event
        kept = reader.snapshot()
        dumped = CtnetlinkReader(scratch, events=False).snapshot()
        assert [_key(e) for e in kept] == [_key(e) for e in dumped]
        assert kept[0].timeout_s <= dumped[0].timeout_s - 2  # the documented difference
        assert reader.walks == 1
        reader.resync()
        after = reader.snapshot()
    assert reader.walks == 2 and reader.resyncs["period"] == 1
    assert [_key(e) for e in after] == [_key(e) for e in dumped]
    assert abs(after[0].timeout_s - dumped[0].timeout_s) <= 1
    reader.close()


def test_lost_events_make_a_resync_that_is_right(scratch):
    shell = _track(scratch)
    reader = CtnetlinkReader(scratch, resync_s=HOUR_S, rcvbuf_bytes=1)  # the kernel's minimum
    reader.snapshot()
    senders = [_udp_from(scratch) for _ in range(300)]  # 300 entries: NEW events overflow
    try:
        for udp in senders:
            udp.sendto(b"x", ("127.0.0.1", 9))
        got = _agree(reader, shell, None)
    finally:
        for udp in senders:
            udp.close()
    assert reader.resyncs["lost"] >= 1, reader.resyncs
    assert sum(e.protocol == "udp" for e in got) == 300
    reader.close()


def test_an_entry_that_expires_without_destroy_leaves_without_a_walk(scratch):
    shell = _track(scratch)
    shell.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2"])  # this netns only
    reader = CtnetlinkReader(scratch, resync_s=HOUR_S)
    reader.snapshot()
    with _udp_from(scratch) as udp:
        udp.sendto(b"x", ("127.0.0.1", 9))
        wait_until(reader.snapshot, lambda got: len(got) == 1, timeout_s=5, what="the entry")
        wait_until(reader.snapshot, lambda got: got == [], timeout_s=10, what="its expiry")
    assert conntrack.snapshot(shell) == []
    assert reader.walks == 1, reader  # a GET or the GC's DESTROY, never a dump
    print(f"\n{reader}")
    reader.close()
