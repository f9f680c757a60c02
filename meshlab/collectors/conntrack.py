"""Conntrack table snapshots from ``conntrack -L`` (conntrack-tools), parsed and aggregated.

The argv runs through any :class:`~meshlab.envs.base.Shell` (a cluster node or pod:
:class:`ConntrackCommand`). The local lab reads the same entries over ``ctnetlink`` from inside
each node and pod netns instead of spawning ``conntrack`` each tick
(:class:`meshlab.collectors.ctnetlink.CtnetlinkReader`, checked against ``conntrack -L``). ``conntrack -L`` prints one entry per line
on stdout (the ``N flow entries have been shown`` summary goes to stderr), e.g. from the lab::

    tcp      6 431999 ESTABLISHED src=10.244.1.2 dst=10.244.2.2 sport=60612 dport=8080 src=…
    tcp      6 119 SYN_SENT src=10.244.1.2 dst=10.244.2.99 sport=42150 dport=8081 [UNREPLIED] …
    udp      17 29 src=10.244.1.2 dst=10.244.2.2 sport=57062 dport=5353 [UNREPLIED] src=…
    icmp     1 29 src=10.244.1.2 dst=10.244.2.2 type=8 code=0 id=1 src=10.244.2.2 …
    unknown  2 598 src=10.244.1.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 …

Columns: protocol name, protocol number, seconds left until the entry expires, then the
protocol state for protocols that have one (TCP, SCTP, DCCP: an upper-case word, libnetfilter
``__snprintf_protoinfo``), then ``key=value`` pairs and ``[FLAGS]``. The ``-o extended`` /
``/proc/net/nf_conntrack`` prefix (``ipv4     2``) is accepted too.

The kernel walks its whole (host-wide) conntrack hash for every dump and filters by netns, so
one dump costs a few ms of kernel time even for an empty namespace (``conntrack -L`` ≈ 9 ms of
CPU in all with its process spawn; a netlink dump ≈ 5 ms, ``benchmarks/collectors.py``); the
netlink reader therefore keeps the table from events between full dumps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from meshlab.collectors.admin_http import ADMIN_HOST, ADMIN_PORT

CONNTRACK_ARGV = ["conntrack", "-L"]
#: The sidecar admin endpoint the collectors poll (its entries are left out of the series).
ADMIN_ENDPOINT = (ADMIN_HOST, ADMIN_PORT)


@dataclass(frozen=True)
class ConntrackEntry:
    """One conntrack entry.

    Attributes:
        protocol: ``tcp``, ``udp``, ``icmp``, ``unknown`` (e.g. IGMP)…
        timeout_s: seconds until the entry expires (the kernel's remaining timeout).
        state: the protocol state (``ESTABLISHED``, ``TIME_WAIT``, ``SYN_SENT``…), or None for
            stateless protocols.
        src, dst: the original direction's addresses.
        sport, dport: the original direction's ports (None without ports, e.g. ICMP).
        flags: the bracketed flags, e.g. ``("ASSURED",)`` or ``("UNREPLIED",)``.
    """

    protocol: str
    timeout_s: int
    state: str | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    flags: tuple[str, ...] = ()

    @property
    def state_key(self) -> str:
        """The state, or the protocol for a stateless entry (the series' ``states`` key)."""
        return self.state or self.protocol


def parse_line(line: str) -> ConntrackEntry | None:
    """One ``conntrack -L`` line as an entry, or None if it is not one."""
    cols = line.split()
    if len(cols) >= 2 and cols[0] in ("ipv4", "ipv6") and cols[1].isdigit():
        cols = cols[2:]  # -o extended / /proc/net/nf_conntrack: l3 name and number first
    if len(cols) < 3 or not cols[1].isdigit() or not cols[2].isdigit():
        return None
    word = cols[3] if len(cols) > 3 else ""
    state = word if word.isupper() and "=" not in word and not word.startswith("[") else None
    fields: dict[str, str] = {}
    flags: list[str] = []
    for token in cols[4 if state else 3:]:
        if token.startswith("[") and token.endswith("]"):
            flags.append(token[1:-1])
        else:
            key, sep, value = token.partition("=")
            if sep and key not in fields:  # the first src/dst/sport/dport: original direction
                fields[key] = value
    return ConntrackEntry(
        protocol=cols[0], timeout_s=int(cols[2]), state=state, src=fields.get("src"),
        dst=fields.get("dst"), sport=int(fields["sport"]) if "sport" in fields else None,
        dport=int(fields["dport"]) if "dport" in fields else None, flags=tuple(flags))


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """Parse ``conntrack -L`` output; other lines (e.g. the summary, if stderr is merged) are
    skipped."""
    return [e for e in (parse_line(line) for line in text.splitlines()) if e is not None]


def snapshot(shell: Any) -> list[ConntrackEntry]:
    """Run ``conntrack -L`` through ``shell`` and parse it.

    Raises:
        CommandError: ``conntrack`` failed (e.g. no permission).
        LabError: the namespace is gone or the command timed out.
    """
    return parse_conntrack(shell.run(CONNTRACK_ARGV, timeout_s=20).stdout)


def aggregate(entries: Iterable[ConntrackEntry]) -> dict[str, Any]:
    """The series' data keys (docs/CONTRACTS.md §5) of one snapshot.

    Returns:
        ``{"entries": n, "states": {state or protocol: n},
        "timeout_s": {state or protocol: {"min": s, "max": s}}}``.
    """
    states: Counter[str] = Counter()
    timeouts: dict[str, dict[str, int]] = {}
    for entry in entries:
        key = entry.state_key
        states[key] += 1
        span = timeouts.setdefault(key, {"min": entry.timeout_s, "max": entry.timeout_s})
        span["min"] = min(span["min"], entry.timeout_s)
        span["max"] = max(span["max"], entry.timeout_s)
    return {"entries": sum(states.values()), "states": dict(sorted(states.items())),
            "timeout_s": dict(sorted(timeouts.items()))}


class ConntrackReader(Protocol):
    """Where a :class:`ConntrackTarget` gets one namespace's entries: :class:`ConntrackCommand`
    (``conntrack -L`` through a Shell) or
    :class:`~meshlab.collectors.ctnetlink.CtnetlinkReader` (netlink)."""

    source: str

    def snapshot(self) -> list[ConntrackEntry]:
        """The entries now; raises :class:`~meshlab.errors.MeshlabError` when unreadable."""
        ...

    def close(self) -> None:
        """Release what the reader keeps open."""
        ...


class ConntrackCommand:
    """:func:`snapshot` through a Shell: one ``conntrack`` process per read.

    Args:
        shell: runs ``conntrack -L`` in the namespace.
    """

    source = "conntrack"

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __repr__(self) -> str:
        return f"ConntrackCommand(shell={self.shell!r})"

    def snapshot(self) -> list[ConntrackEntry]:
        """:func:`snapshot` (raises like it)."""
        return snapshot(self.shell)

    def close(self) -> None:
        """Nothing to release."""


class ConntrackTarget:
    """A sampler target: one netns's conntrack table per read.

    Args:
        reader: reads the namespace's entries (:class:`ConntrackReader`).
        name: the series' ``target`` (node or pod name).
        kind: ``node`` or ``pod``.
    """

    series = "conntrack"

    def __init__(self, reader: ConntrackReader, name: str, kind: str) -> None:
        self.reader = reader
        self.name = name
        self.kind = kind

    def __repr__(self) -> str:
        return (f"ConntrackTarget(name={self.name!r}, kind={self.kind!r}, "
                f"source={self.reader.source!r})")

    def read(self) -> dict[str, Any]:
        """``{"kind", "entries", "states", "timeout_s"}`` now (raises like the reader); the
        collectors' own connections to the sidecar admin (``127.0.0.1:15000``) are left out."""
        return {"kind": self.kind, **aggregate(
            e for e in self.reader.snapshot() if (e.dst, e.dport) != ADMIN_ENDPOINT)}

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()
