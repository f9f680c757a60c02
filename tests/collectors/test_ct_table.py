"""The event-kept conntrack table's rules without a kernel (built records, given clocks)."""

from __future__ import annotations

from meshlab.collectors.conntrack import ConntrackEntry
from meshlab.collectors.ct_table import ConntrackTable, Record


def rec(key: bytes, timeout_s: int, state: str | None = "ESTABLISHED",
        has_state: bool = True) -> Record:
    entry = ConntrackEntry(protocol="tcp", timeout_s=timeout_s, state=state, src="10.0.0.1",
                           dst="10.0.0.2", sport=1000, dport=80, flags=("ASSURED",))
    return Record(key, entry, has_state, b"req-" + key)


def test_events_replace_keep_state_and_remove():
    table = ConntrackTable()
    table.load([rec(b"a", 100)], 0.0, first=False)
    table.apply(rec(b"a", 120, state=None, has_state=False), False, 10.0)  # status-only
    assert [(e.state, e.timeout_s) for e in table.entries(10.5)] == [("ESTABLISHED", 120)]
    assert [e.timeout_s for e in table.entries(13.9)] == [117]  # whole seconds since
    table.apply(rec(b"a", 60, "CLOSE_WAIT"), False, 20.0)
    assert [e.state for e in table.entries(20.0)] == ["CLOSE_WAIT"]
    table.apply(rec(b"a", 0), True, 21.0)
    assert table.entries(21.0) == [] and len(table) == 0


def test_due_rows_untracked_expired_and_unknown_state():
    table = ConntrackTable()
    table.load([rec(b"old", 500)], 0.0, first=True)  # may predate the subscription
    assert table.untracked == 1 and table.due(0.0) == [b"old"]
    table.refresh(b"old", rec(b"old", 400), 1.0)  # the kernel's answer keeps it untracked
    assert table.untracked == 1
    table.apply(rec(b"old", 300), False, 2.0)  # an event proves it sends them
    assert table.untracked == 0 and table.due(2.0) == []
    assert table.due(2.0 + 299.9) == [] and table.due(2.0 + 300.0) == [b"old"]  # 0 s left
    assert [e.timeout_s for e in table.entries(400.0)] == [0]
    table.refresh(b"old", None, 400.0)  # ENOENT: gone
    assert len(table) == 0
    table.apply(rec(b"new", 30, state=None, has_state=False), False, 5.0)
    assert table.due(5.0) == [b"new"] and table.request(b"new") == b"req-new"


def test_a_later_dump_keeps_tracking_and_counts_new_rows_as_tracked():
    table = ConntrackTable()
    table.load([rec(b"a", 10)], 0.0, first=True)
    table.load([rec(b"a", 9), rec(b"b", 9)], 1.0, first=False)
    assert table.due(1.0) == [b"a"]  # still untracked; b came after the subscription
    table.load([rec(b"b", 9)], 2.0, first=True)  # a new socket: nothing known is trusted
    assert table.due(2.0) == [b"b"]
