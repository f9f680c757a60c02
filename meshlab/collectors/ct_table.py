"""One network namespace's conntrack table kept from ``ctnetlink`` events, without I/O.

:class:`~meshlab.collectors.ctnetlink.CtnetlinkReader` feeds it: a full dump
(:meth:`ConntrackTable.load`), then the events it drains each read (:meth:`ConntrackTable.apply`)
and the answers to single-entry requests (:meth:`ConntrackTable.refresh`). Rules:

- rows are keyed by ``CTA_ID`` (the kernel's id of the entry, stable for its life);
- a ``NEW`` or ``UPDATE`` event replaces the row; an ``UPDATE`` without ``CTA_PROTOINFO``
  (the kernel only sends it when the state changed, e.g. not for a status-only change) keeps
  the row's state; a ``DESTROY`` removes it;
- the remaining timeout is ``CTA_TIMEOUT`` of the last message minus the whole seconds since
  it was sent (:meth:`ConntrackTable.entries`), never below 0; the reader passes the earliest
  time it can have been sent (netlink has no timestamps), so it never reads high;
- a row is *due* (:meth:`ConntrackTable.due`: the reader asks the kernel for that one entry)
  when its remaining timeout reached 0 and no ``DESTROY`` came (expired, or refreshed by
  packets without an event), when it is *untracked*, or when its state is unknown (an
  ``UPDATE`` without state for a row never seen);
- *untracked* rows: with ``nf_conntrack_events=2`` (the default) the kernel gives an entry its
  event extension only if a listener existed when it was created, so entries that were there
  before the reader subscribed never send events. Rows of the first dump after a subscription
  are untracked (asked for every read) until an event about them proves otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from meshlab.collectors.conntrack import ConntrackEntry

STATEFUL = frozenset({"tcp", "sctp", "dccp"})
"""Protocols whose entries have a state (``CTA_PROTOINFO``)."""


class Record(NamedTuple):
    """One decoded ``ctnetlink`` entry message.

    Attributes:
        key: the row key (``CTA_ID`` bytes, or the original tuple's without one).
        entry: the entry as ``conntrack -L`` shows it, None without ``CTA_TIMEOUT``.
        has_state: True when the message carried the protocol state.
        request: the ``nfgenmsg`` and attributes that name this entry in a single-entry
            ``IPCTNL_MSG_CT_GET`` (family, ``CTA_TUPLE_ORIG``, ``CTA_ZONE``).
    """

    key: bytes
    entry: ConntrackEntry | None
    has_state: bool
    request: bytes


@dataclass
class _Row:
    entry: ConntrackEntry
    since_s: float
    """``time.monotonic()`` when ``entry.timeout_s`` was (at the earliest) read."""
    request: bytes
    tracked: bool
    state_known: bool = True

    def remaining_s(self, now_s: float) -> int:
        return max(0, self.entry.timeout_s - int(now_s - self.since_s))

    def due(self, now_s: float) -> bool:
        return (not self.tracked or not self.state_known
                or now_s - self.since_s >= self.entry.timeout_s)


class ConntrackTable:
    """The event-kept rows of one namespace (not thread-safe: one reader feeds it)."""

    def __init__(self) -> None:
        self._rows: dict[bytes, _Row] = {}

    def __repr__(self) -> str:
        untracked = sum(not r.tracked for r in self._rows.values())
        return f"ConntrackTable(rows={len(self._rows)}, untracked={untracked})"

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def untracked(self) -> int:
        """Rows that send no events (asked for each read)."""
        return sum(not r.tracked for r in self._rows.values())

    def load(self, records: list[Record], now_s: float, *, first: bool) -> None:
        """Replace the rows by a full dump's.

        Args:
            records: the dump's entries.
            now_s: ``time.monotonic()`` when the dump was asked for.
            first: the first dump since the socket subscribed: new rows are untracked (may
                predate the subscription); later dumps keep known rows' tracking and count new
                rows (created after the subscription, their events lost) as tracked.
        """
        old = self._rows
        self._rows = {}
        for rec in records:
            if rec.entry is None:
                continue
            tracked = False if first else old[rec.key].tracked if rec.key in old else True
            self._rows[rec.key] = _Row(rec.entry, now_s, rec.request, tracked)

    def apply(self, record: Record, destroy: bool, now_s: float) -> None:
        """Apply one event: ``NEW``/``UPDATE`` (``destroy`` False) or ``DESTROY``.

        Args:
            record: the event's entry.
            destroy: True for ``IPCTNL_MSG_CT_DELETE``.
            now_s: ``time.monotonic()`` at the earliest it can have been sent (the start of
                the previous drain).
        """
        if destroy:
            self._rows.pop(record.key, None)
            return
        if record.entry is None:
            return
        entry, known = record.entry, True
        if not record.has_state:
            old = self._rows.get(record.key)
            if old is not None:
                entry, known = replace(entry, state=old.entry.state), old.state_known
            else:
                known = entry.protocol not in STATEFUL
        self._rows[record.key] = _Row(entry, now_s, record.request, True, known)

    def due(self, now_s: float) -> list[bytes]:
        """Keys of the rows to ask the kernel for (see the module docstring)."""
        return [key for key, row in self._rows.items() if row.due(now_s)]

    def request(self, key: bytes) -> bytes:
        """The single-entry request attributes of row ``key`` (:attr:`Record.request`)."""
        return self._rows[key].request

    def refresh(self, key: bytes, record: Record | None, now_s: float) -> None:
        """Put the kernel's answer for row ``key``: its entry now, or None when gone.

        A row the kernel still has keeps its tracking (an answer is not an event).
        """
        row = self._rows.pop(key, None)
        if record is None or record.entry is None or row is None:
            return
        self._rows[record.key] = _Row(record.entry, now_s, record.request, row.tracked)

    def entries(self, now_s: float) -> list[ConntrackEntry]:
        """Every row as ``conntrack -L`` would show it at ``now_s`` (remaining timeouts)."""
        out = []
        for row in self._rows.values():
            left = row.remaining_s(now_s)
            out.append(row.entry if left == row.entry.timeout_s
                       else replace(row.entry, timeout_s=left))
        return out
