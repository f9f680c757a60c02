"""Conntrack table snapshots over ``ctnetlink`` (``NETLINK_NETFILTER``), as ``conntrack -L``
shows them.

The local lab's reader of :class:`~meshlab.collectors.conntrack.ConntrackEntry` records: the
kernel answer ``conntrack -L`` (conntrack-tools 1.4.7, libnetfilter_conntrack 1.0.9) prints,
turned into the *same* entries :func:`~meshlab.collectors.conntrack.parse_conntrack` makes of
its text, without spawning ``ip netns exec conntrack`` each tick. The rules are the library's
default output (``src/conntrack/snprintf_default.c``):

- ``protocol``: ``tcp``, ``udp``, ``udplite``, ``icmp``, ``icmpv6``, ``sctp``, ``gre``,
  ``dccp``, else ``unknown`` (e.g. IGMP);
- ``timeout_s``: ``CTA_TIMEOUT`` (seconds left); an entry without one is left out (its line
  would not parse);
- ``state``: the TCP state (``NONE``, ``SYN_SENT``, ``SYN_RECV``, ``ESTABLISHED``,
  ``FIN_WAIT``, ``CLOSE_WAIT``, ``LAST_ACK``, ``TIME_WAIT``, ``CLOSE``, ``SYN_SENT2``), the
  SCTP or DCCP state, None for stateless protocols;
- ``src``/``dst``/``sport``/``dport`` of the original direction (ports for TCP, UDP, UDP-Lite,
  SCTP and DCCP only);
- ``flags`` in printed order: ``UNREPLIED`` (no ``IPS_SEEN_REPLY``), then ``HW_OFFLOAD`` or
  ``OFFLOAD``, then ``ASSURED``.

The dump asks for both address families (``nfgen_family`` ``AF_UNSPEC``), as ``conntrack -L``
does. Attribute numbers come from pyroute2's ``nfct_msg`` map; messages are decoded with
:mod:`struct` (pyroute2's generic decoder costs ≈ 70 µs per entry, more than the ``conntrack``
process it replaces at a few hundred entries).

**Events instead of a dump per read.** For every dump the kernel walks its whole *host-wide*
conntrack hash and keeps this namespace's entries (≈ 5 ms of non-preemptible kernel time on a
262144-bucket table, even for an empty namespace), as it does for ``conntrack -L``. So the
reader (``events=True``, the default) dumps once, then keeps the table from the
``NFNLGRP_CONNTRACK_NEW``/``UPDATE``/``DESTROY`` events its socket is subscribed to (bound with
those group bits before the first dump), drained without blocking at each read
(:class:`~meshlab.collectors.ct_table.ConntrackTable` holds the rules). It walks the table
again (a full dump, "resync") only:

- ``open``: on the first read, and when the namespace was re-created (a new socket);
- ``lost``: after the socket reported ``ENOBUFS`` (the kernel dropped events);
- ``period``: every ``resync_s`` seconds (the first period is a random 50–100 % of it, so
  the readers of a lab do not all walk at the same tick);
- ``expired``: when more than ``max_gets`` rows are due at once (below; e.g. a reader opened
  on a namespace holding hundreds of older entries dumps every read until they are gone).

Rows that are *due* (remaining timeout run out by more than a second with no ``DESTROY``;
entries that predate the subscription and so send no events; an unknown state) are asked for
one by one (``IPCTNL_MSG_CT_GET`` by original tuple: a hash lookup, no walk; a gone or expired
entry answers ``ENOENT``, and the lookup reaps an expired one).

**Where the values can differ from ``conntrack -L`` between resyncs.** States, flags, tuples
and the set of entries follow the events: every state change, status change (``ASSURED``,
seen reply) and removal sends one. The kernel sends *no* event when a packet only refreshes an
entry's timeout without changing its state (``nf_ct_refresh_acct``: e.g. an ``ESTABLISHED``
keep-alive connection carrying requests, a UDP flow, retransmitted SYNs), so for such an entry
the remaining timeout here keeps counting down from the last event while ``conntrack -L``
shows the refreshed one: lower by at most the seconds since the last event or resync
(≤ ``resync_s``), or 0 then due — only ``timeout_s`` of entries refreshed by packets without a
state change. Netlink has no receive timestamps, so an event's age in the socket queue is not
known: it is counted from the start of the previous read's drain (the earliest it can have been
sent), so a remaining timeout can also read up to one read interval low (never high: an entry
is asked for, not shown past its expiry). With ``nf_conntrack_events=0`` in the namespace no events are sent and the reader dumps
every read (as with ``events=False``).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from functools import lru_cache

from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import (
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
)
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    IPS_ASSURED,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    nfct_msg,
)

from meshlab.collectors.conntrack import ConntrackEntry
from meshlab.collectors.ct_table import ConntrackTable, Record
from meshlab.collectors.netlink_io import NLMSG_HDR, NetnsNetlink
from meshlab.envs.local.netns_socket import run_in_netns


def _types(nla_map: tuple) -> dict[str, int]:
    return {entry[0]: i for i, entry in enumerate(nla_map)}


_CTA = _types(nfct_msg.nla_map)
_TUPLE = _types(nfct_msg.cta_tuple.nla_map)
_IP = _types(nfct_msg.cta_tuple.cta_ip.nla_map)
_PROTO = _types(nfct_msg.cta_tuple.cta_proto.nla_map)
_PROTOINFO = _types(nfct_msg.cta_protoinfo.nla_map)
_NLA_TYPE_MASK = 0x3FFF  # NLA_F_NESTED / NLA_F_NET_BYTEORDER stripped
IPS_HW_OFFLOAD = 1 << 15
"""``linux/netfilter/nf_conntrack_common.h`` (not in pyroute2's list)."""

PROTOCOL_NAMES = {6: "tcp", 17: "udp", 136: "udplite", 1: "icmp", 58: "icmpv6", 132: "sctp",
                  47: "gre", 33: "dccp"}
"""IP protocol number → the library's name (``proto2str``); others print ``unknown``."""
PORT_PROTOCOLS = frozenset({6, 17, 136, 132, 33})
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
SCTP_STATES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED",
               "SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT",
               "HEARTBEAT_ACKED")
DCCP_STATES = ("NONE", "REQUEST", "RESPOND", "PARTOPEN", "ESTABLISHED", "CLOSEREQ", "CLOSING",
               "TIMEWAIT", "IGNORE", "INVALID")
_STATE_TABLES = {_PROTOINFO["CTA_PROTOINFO_TCP"]: TCP_STATES,
                 _PROTOINFO["CTA_PROTOINFO_SCTP"]: SCTP_STATES,
                 _PROTOINFO["CTA_PROTOINFO_DCCP"]: DCCP_STATES}
_NFGEN_BYTES = 4  # struct nfgenmsg: family, version, res_id
EVENT_GROUPS = sum(1 << (g - 1) for g in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE,
                                           NFNLGRP_CONNTRACK_DESTROY))
"""``nl_groups`` bits of the entry events (``NF_NETLINK_CONNTRACK_NEW|UPDATE|DESTROY`` = 7)."""
EVENT_RCVBUF_BYTES = 4 << 20
"""Receive buffer of a subscribed socket (the kernel doubles it): ≈ 20000 queued events."""
DEFAULT_RESYNC_S = 30.0
DEFAULT_MAX_GETS = 128
"""Single-entry requests per read before a full dump is cheaper (≈ 20 µs each vs ≈ 5 ms)."""
EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"
_CT_TYPE = NFNL_SUBSYS_CTNETLINK << 8
_NLA_NESTED = 0x8000


@lru_cache(maxsize=1)
def dump_request() -> bytes:
    """The encoded ``IPCTNL_MSG_CT_GET`` dump request for every entry of both families."""
    req = nfct_msg()
    req["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["nfgen_family"] = socket.AF_UNSPEC
    req["version"] = 0
    req["res_id"] = 0
    req.encode()
    return bytes(req.data)


def _attrs(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """``{attribute type: payload}`` of the ``nlattr`` run in ``data[start:end]``."""
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while start + 4 <= end:
        length, atype = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        out.setdefault(atype & _NLA_TYPE_MASK, data[start + 4:start + length])
        start += (length + 3) & ~3
    return out


def _address(ip: dict[int, bytes], v4: str, v6: str) -> str | None:
    if (raw := ip.get(_IP[v4])) is not None:
        return socket.inet_ntop(socket.AF_INET, raw)
    if (raw := ip.get(_IP[v6])) is not None:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


def _nla(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def parse_message(payload: bytes) -> ConntrackEntry | None:
    """One ``IPCTNL_MSG_CT_NEW`` dump message as the entry its ``conntrack -L`` line parses to,
    or None for an entry without a timeout (its line has none)."""
    return decode(payload).entry


def decode(payload: bytes) -> Record:
    """One ``ctnetlink`` entry message (dump answer or event) as a table
    :class:`~meshlab.collectors.ct_table.Record`."""
    top = _attrs(payload, _NFGEN_BYTES)
    raw_orig = top.get(_CTA["CTA_TUPLE_ORIG"], b"")
    request = payload[:1] + b"\0\0\0" + _nla(_CTA["CTA_TUPLE_ORIG"] | _NLA_NESTED, raw_orig)
    if (zone := top.get(_CTA["CTA_ZONE"])) is not None:
        request += _nla(_CTA["CTA_ZONE"], zone)
    key = top.get(_CTA["CTA_ID"]) or raw_orig
    if (timeout := top.get(_CTA["CTA_TIMEOUT"])) is None:
        return Record(key, None, False, request)
    orig = _attrs(raw_orig)
    ip = _attrs(orig.get(_TUPLE["CTA_TUPLE_IP"], b""))
    proto = _attrs(orig.get(_TUPLE["CTA_TUPLE_PROTO"], b""))
    number = proto.get(_PROTO["CTA_PROTO_NUM"], b"\0")[0]
    sport = dport = None
    if number in PORT_PROTOCOLS and _PROTO["CTA_PROTO_SRC_PORT"] in proto:
        sport = struct.unpack(">H", proto[_PROTO["CTA_PROTO_SRC_PORT"]][:2])[0]
        dport = struct.unpack(">H", proto[_PROTO["CTA_PROTO_DST_PORT"]][:2])[0]
    state, has_state = None, False
    for info_type, info in _attrs(top.get(_CTA["CTA_PROTOINFO"], b"")).items():
        table = _STATE_TABLES.get(info_type)
        value = _attrs(info).get(1)  # CTA_PROTOINFO_{TCP,SCTP,DCCP}_STATE
        if table is not None and value:
            state = table[value[0]] if value[0] < len(table) else table[0]
            has_state = True
    flags: list[str] = []
    if (raw := top.get(_CTA["CTA_STATUS"])) is not None:
        status = struct.unpack(">I", raw[:4])[0]
        if not status & IPS_SEEN_REPLY:
            flags.append("UNREPLIED")
        if status & IPS_HW_OFFLOAD:
            flags.append("HW_OFFLOAD")
        elif status & IPS_OFFLOAD:
            flags.append("OFFLOAD")
        if status & IPS_ASSURED:
            flags.append("ASSURED")
    return Record(key, ConntrackEntry(
        protocol=PROTOCOL_NAMES.get(number, "unknown"),
        timeout_s=struct.unpack(">I", timeout[:4])[0], state=state,
        src=_address(ip, "CTA_IP_V4_SRC", "CTA_IP_V6_SRC"),
        dst=_address(ip, "CTA_IP_V4_DST", "CTA_IP_V6_DST"), sport=sport, dport=dport,
        flags=tuple(flags)), has_state, request)


def get_request(attrs: bytes) -> bytes:
    """A single-entry ``IPCTNL_MSG_CT_GET`` of :attr:`Record.request` ``attrs`` (sequence 0)."""
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(attrs), _CT_TYPE | IPCTNL_MSG_CT_GET,
                          NLM_F_REQUEST, 0, 0) + attrs


def _events_sysctl() -> int:
    try:
        with open(EVENTS_SYSCTL, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2  # no nf_conntrack yet: it loads with the default


class CtnetlinkReader:
    """The conntrack table of one network namespace per :meth:`snapshot`, over one
    ``ctnetlink`` socket made inside it and kept open (:class:`NetnsNetlink`), kept from events
    between full dumps (module docstring).

    Args:
        netns: the namespace, e.g. ``ml-lab-n0``.
        events: keep the table from events (False: one full dump per snapshot).
        resync_s: seconds between full dumps while events flow (> 0).
        max_gets: due rows asked for one by one per read; more make one full dump instead.
        rcvbuf_bytes: the subscribed socket's receive buffer (tests make it tiny).

    Attributes:
        walks: full dumps made (each a walk of the kernel's whole conntrack hash).
        gets: single-entry requests made (hash lookups).
        resyncs: full dumps by reason (``open``, ``lost``, ``period``, ``expired``, and
            ``dump`` for a reader without events).

    Thread-safe: snapshots run one at a time.
    """

    source = "ctnetlink"
    """What the entries come from (``conntrack`` for the argv reader)."""

    def __init__(self, netns: str, *, events: bool = True, resync_s: float = DEFAULT_RESYNC_S,
                 max_gets: int = DEFAULT_MAX_GETS,
                 rcvbuf_bytes: int | None = EVENT_RCVBUF_BYTES) -> None:
        self.netns = netns
        self.events = events
        self.resync_s = resync_s
        self.max_gets = max_gets
        self.link = NetnsNetlink(netns, NETLINK_NETFILTER, groups=EVENT_GROUPS if events else 0,
                                 rcvbuf_bytes=rcvbuf_bytes if events else None)
        self.table = ConntrackTable()
        self.walks = 0
        self.gets = 0
        self.resyncs: Counter[str] = Counter()
        self._epoch = 0  # link.opened the table was loaded for
        self._events_sent = True  # nf_conntrack_events != 0 in the namespace
        self._resync_at = 0.0
        self._drained_at = 0.0  # monotonic start of the previous drain
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"CtnetlinkReader(netns={self.netns!r}, events={self.events}, "
                f"rows={len(self.table)}, walks={self.walks}, gets={self.gets})")

    def snapshot(self) -> list[ConntrackEntry]:
        """The namespace's conntrack entries now, as
        :func:`~meshlab.collectors.conntrack.parse_conntrack` would parse ``conntrack -L``
        (remaining timeouts of entries refreshed by packets without an event excepted, module
        docstring).

        Raises:
            LabError: the namespace is gone or a netlink exchange failed (e.g. no
                ``nf_conntrack``); the next snapshot starts over with a full dump.
        """
        with self._lock:
            if not self.events:
                return self._dump("dump")
            now, sent_after = time.monotonic(), self._drained_at
            self._drained_at = now
            events, lost = self.link.drain()
            reopened = self.link.opened != self._epoch
            if reopened:
                self._events_sent = run_in_netns(self.netns, _events_sysctl) != 0
            reason = ("open" if reopened else "lost" if lost else "dump"
                      if not self._events_sent else "period" if now >= self._resync_at else "")
            if reason:
                return self._resync(reason, first=reopened)
            self._apply(events, sent_after)
            due = self.table.due(now)
            if len(due) > self.max_gets:
                return self._resync("expired", first=False)
            for key in due:
                asked = time.monotonic()
                answer = self.link.get(get_request(self.table.request(key)))
                self.gets += 1
                self.table.refresh(key, None if answer is None else decode(answer[1]), asked)
            return self.table.entries(time.monotonic())

    def _dump(self, reason: str) -> list[ConntrackEntry]:
        self.walks += 1
        self.resyncs[reason] += 1
        entries = (parse_message(payload) for _, payload in self.link.dump(dump_request()))
        return [e for e in entries if e is not None]

    def _resync(self, reason: str, *, first: bool) -> list[ConntrackEntry]:
        """Load the table from a full dump, then apply the events that came during it; again
        (up to 3 dumps) while events were lost or the socket was replaced meanwhile."""
        for _ in range(3):
            opened, now = self.link.opened, time.monotonic()
            self.walks += 1
            self.resyncs[reason] += 1
            records = [decode(p) for t, p in self.link.dump(dump_request())
                       if t == _CT_TYPE | IPCTNL_MSG_CT_NEW]
            self._drained_at = time.monotonic()
            events, lost = self.link.drain()
            first = first or self.link.opened != opened
            self.table.load(records, now, first=first)
            self._apply(events, now)
            self._epoch = self.link.opened
            if not lost and self.link.opened == opened:
                break
            reason = "lost"
        period = self.resync_s if self.walks > 1 else self.resync_s * random.uniform(0.5, 1)
        self._resync_at = time.monotonic() + period
        return self.table.entries(time.monotonic())

    def _apply(self, events: list[tuple[int, bytes]], now_s: float) -> None:
        for mtype, payload in events:
            if mtype in (_CT_TYPE | IPCTNL_MSG_CT_NEW, _CT_TYPE | IPCTNL_MSG_CT_DELETE):
                self.table.apply(decode(payload), mtype & 0xFF == IPCTNL_MSG_CT_DELETE, now_s)

    def resync(self) -> None:
        """Make the next snapshot a full dump (as every ``resync_s``)."""
        with self._lock:
            self._resync_at = 0.0

    def close(self) -> None:
        """Close the netlink socket (the next snapshot reopens it and dumps)."""
        with self._lock:
            self.link.close()
