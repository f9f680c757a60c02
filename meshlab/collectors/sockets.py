"""TCP socket snapshots from ``ss -Htanoie`` (iproute2), parsed into records.

The argv is built here and run through any :class:`~meshlab.envs.base.Shell` (``kubectl exec``
into a debug container on a cluster: :class:`SsReader`). The local lab reads the same records
over netlink ``sock_diag`` from inside the pod's netns instead of spawning ``ss`` each tick
(:class:`meshlab.collectors.sock_diag.SockDiagReader`, checked against ``ss`` on the lab). What an SRE reads from ``ss`` in the seed book — half-open ESTAB sockets with a
retransmit timer after a node power-off, a sidecar's leaked FIN-WAIT-2 / CLOSE-WAIT pair after a
half-close — is available as fields:

- ``state`` as ss prints it (``ESTAB``, ``FIN-WAIT-2``, ``CLOSE-WAIT``, ``TIME-WAIT``, ``LISTEN``…)
- ``recv_q`` / ``send_q`` (bytes), ``local`` / ``peer`` (``ip:port``), ``uid`` (1337: the sidecar)
- ``timer`` (``on`` = retransmit, ``keepalive``, ``timewait``, ``persist``…), ``timer_expires_ms``,
  ``timer_retrans`` (retransmits of the current timer)
- from the TCP_INFO line: ``rto_ms``, ``rtt_ms``, ``retrans`` (current), ``retrans_total``,
  ``unacked``, ``lost``, ``bytes_sent``, ``bytes_retrans``, ``notsent_bytes``, ``lastsnd_ms``,
  ``lastrcv_ms``
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from meshlab.collectors.admin_http import ADMIN_HOST, ADMIN_PORT
from meshlab.missing import dry_run_active, is_missing, not_measured

SS_ARGV = ["ss", "-Htanoie"]

_TIMER = re.compile(r"timer:\((\w+),(?:(\d+)min)?(?:([\d.]+)sec)?(?:([\d.]+)ms)?,(\d+)\)")
_KV = re.compile(r"(\w+):([\d./]+)")


@dataclass
class SocketInfo:
    """One TCP socket as ``ss -tanoie`` shows it (fields: see the module docstring)."""

    state: str
    recv_q: int
    send_q: int
    local: str
    peer: str
    uid: int | None = None
    timer: str | None = None
    timer_expires_ms: float | None = None
    timer_retrans: int = 0
    rto_ms: float | None = None
    rtt_ms: float | None = None
    retrans: int = 0
    retrans_total: int = 0
    unacked: int = 0
    lost: int = 0
    bytes_sent: int = 0
    bytes_retrans: int = 0
    notsent_bytes: int = 0
    lastsnd_ms: int | None = None
    lastrcv_ms: int | None = None

    @property
    def local_port(self) -> int:
        """The local port."""
        return int(self.local.rsplit(":", 1)[1])

    @property
    def peer_ip(self) -> str:
        """The peer address without the port (brackets of IPv6 removed)."""
        return self.peer.rsplit(":", 1)[0].strip("[]")

    @property
    def peer_port(self) -> int:
        """The peer port (0 for a listener's ``*``)."""
        tail = self.peer.rsplit(":", 1)[1]
        return int(tail) if tail.isdigit() else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _expires_ms(match: re.Match[str]) -> float:
    minutes, sec, ms = match.group(2), match.group(3), match.group(4)
    if ms and "." in ms:  # iproute2 6.1 prints 1-10 s as e.g. "4.960ms" (meaning 4.960 s)
        return float(ms) * 1000
    return (float(minutes or 0) * 60 + float(sec or 0)) * 1000 + float(ms or 0)


def _apply_info(sock: SocketInfo, info: str) -> None:
    for key, value in _KV.findall(info):
        if key == "rto":
            sock.rto_ms = float(value)
        elif key == "rtt":
            sock.rtt_ms = float(value.split("/")[0])
        elif key == "retrans":
            cur, _, total = value.partition("/")
            sock.retrans, sock.retrans_total = int(float(cur)), int(float(total or cur))
        elif key in ("unacked", "lost", "bytes_sent", "bytes_retrans"):
            setattr(sock, key, int(float(value)))
        elif key == "notsent":
            sock.notsent_bytes = int(float(value))
        elif key in ("lastsnd", "lastrcv"):
            setattr(sock, f"{key}_ms", int(float(value)))


def parse_ss(text: str) -> list[SocketInfo]:
    """Parse ``ss -Htanoie`` output (one line per socket, plus an indented TCP_INFO line).

    Lines that are neither (e.g. ``Failed to find cgroup2 mount`` on stderr merged in) are
    skipped.
    """
    out: list[SocketInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if out:
                _apply_info(out[-1], line)
            continue
        cols = line.split()
        if len(cols) < 5 or not cols[1].isdigit() or not cols[2].isdigit():
            continue
        sock = SocketInfo(state=cols[0], recv_q=int(cols[1]), send_q=int(cols[2]),
                          local=cols[3], peer=cols[4])
        rest = " ".join(cols[5:])
        if m := _TIMER.search(rest):
            sock.timer, sock.timer_expires_ms = m.group(1), _expires_ms(m)
            sock.timer_retrans = int(m.group(5))
        if m := re.search(r"\buid:(\d+)", rest):
            sock.uid = int(m.group(1))
        out.append(sock)
    return out


def snapshot(shell: Any) -> list[SocketInfo]:
    """Run ``ss -Htanoie`` through ``shell`` and parse it.

    Returns:
        The sockets; in a dry run (:func:`meshlab.missing.dry_run_scope`), after the printed
        ``ss``, a Missing ``sockets in <pod>``.

    Raises:
        CommandError: ``ss`` failed.
    """
    out = shell.run(SS_ARGV, timeout_s=20).stdout
    if dry_run_active():
        return not_measured(f"sockets in {shell.name}")  # type: ignore[return-value]
    return parse_ss(out)


def to_dicts(sockets: Iterable[SocketInfo]) -> list[dict[str, Any]]:
    """JSON-ready rows of a snapshot, for an observation (a dry run's Missing as it is)."""
    if is_missing(sockets):
        return sockets  # type: ignore[return-value]
    return [s.to_dict() for s in sockets]


def select(sockets: Iterable[SocketInfo], *, state: str | None = None, uid: int | None = None,
           peer_ip: str | None = None, peer_port: int | None = None,
           local_port: int | None = None) -> list[SocketInfo]:
    """The sockets matching every given filter (``state`` as ss prints it, e.g. ``ESTAB``); of
    a dry run's Missing snapshot, the Missing."""
    if is_missing(sockets):
        return sockets  # type: ignore[return-value]
    return [s for s in sockets
            if (state is None or s.state == state) and (uid is None or s.uid == uid)
            and (peer_ip is None or s.peer_ip == peer_ip)
            and (peer_port is None or s.peer_port == peer_port)
            and (local_port is None or s.local_port == local_port)]


def count_by_state(sockets: Iterable[SocketInfo]) -> dict[str, int]:
    """``{state: count}`` over the sockets (listeners included)."""
    return dict(Counter(s.state for s in sockets))


#: ``ss`` timer names the series counts (``timer:(on,…)`` is the retransmit timer).
SERIES_TIMERS = ("on", "keepalive", "timewait", "persist")


def aggregate(sockets: Iterable[SocketInfo]) -> dict[str, Any]:
    """The series' data keys (docs/CONTRACTS.md §5) of one snapshot.

    Returns:
        ``{"states": {ss state: n}, "retrans_total": Σ, "unacked": Σ, "send_q_bytes": Σ,
        "rtt_ms_max": ms | None, "rtt_ms_avg": ms | None, "timers": {on|keepalive|timewait|
        persist: n}}``; the sums and RTTs come from the TCP_INFO of the sockets that have one
        (``rtt_ms_*`` None when none has); a listener's Send-Q is its backlog, not bytes, and
        is left out.
    """
    socks = list(sockets)
    rtts = [s.rtt_ms for s in socks if s.rtt_ms is not None]
    timers = Counter(s.timer for s in socks if s.timer in SERIES_TIMERS)
    return {"states": dict(sorted(count_by_state(socks).items())),
            "retrans_total": sum(s.retrans_total for s in socks),
            "unacked": sum(s.unacked for s in socks),
            "send_q_bytes": sum(s.send_q for s in socks if s.state != "LISTEN"),
            "rtt_ms_max": max(rtts) if rtts else None,
            "rtt_ms_avg": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "timers": {t: timers.get(t, 0) for t in SERIES_TIMERS}}


#: The sidecar admin address the collectors themselves poll (left out of the series).
ADMIN_ADDRESS = f"{ADMIN_HOST}:{ADMIN_PORT}"


class SocketReader(Protocol):
    """Where a :class:`SocketsTarget` gets one namespace's sockets: :class:`SsReader` (``ss``
    through a Shell) or :class:`~meshlab.collectors.sock_diag.SockDiagReader` (netlink)."""

    source: str

    def snapshot(self) -> list[SocketInfo]:
        """The sockets now; raises :class:`~meshlab.errors.MeshlabError` when unreadable."""
        ...

    def close(self) -> None:
        """Release what the reader keeps open."""
        ...


class SsReader:
    """:func:`snapshot` through a Shell: one ``ss`` process per read.

    Args:
        shell: runs ``ss`` in the pod's network namespace.
    """

    source = "ss"

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __repr__(self) -> str:
        return f"SsReader(shell={self.shell!r})"

    def snapshot(self) -> list[SocketInfo]:
        """:func:`snapshot` (raises like it)."""
        return snapshot(self.shell)

    def close(self) -> None:
        """Nothing to release."""


class SocketsTarget:
    """A sampler target: one pod's TCP sockets per read, aggregated.

    The collectors' own admin connections (one end at :data:`ADMIN_ADDRESS`) are left out,
    so polling ``/stats`` does not show up as ESTAB / TIME-WAIT sockets and send-queue bytes.

    Args:
        reader: reads the pod network namespace's sockets (:class:`SocketReader`).
        name: the series' ``target`` (the pod name).
    """

    series = "sockets"

    def __init__(self, reader: SocketReader, name: str) -> None:
        self.reader = reader
        self.name = name

    def __repr__(self) -> str:
        return f"SocketsTarget(name={self.name!r}, source={self.reader.source!r})"

    def read(self) -> dict[str, Any]:
        """:func:`aggregate` of a fresh snapshot (raises like the reader)."""
        return aggregate(s for s in self.reader.snapshot()
                         if s.state == "LISTEN" or ADMIN_ADDRESS not in (s.local, s.peer))

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()
