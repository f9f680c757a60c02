"""Open-loop constant-rate HTTP load with coordinated-omission correction (issue #7).

Requests are started on a schedule (:func:`meshlab.load.schedule.offsets_s`: request ``i`` at
``t0 + i / rate``, or Poisson arrivals) whatever the target does, over a pool of at most
``connections`` keep-alive HTTP/1.1 connections (:mod:`meshlab.load.http_conn`), opened on
demand; a request finding every connection busy waits in a FIFO queue for the next free one, so
no more than ``connections`` are ever in flight. Each request keeps its **intended start** and
is recorded (:class:`~meshlab.load.recorder.Recorder`, µs HdrHistograms) twice:

- corrected latency = completion − intended start (what a user arriving on schedule waited:
  the queueing behind a stalled target counts, as in wrk2 and HdrHistogram's
  ``recordValueWithExpectedInterval`` rationale — "coordinated omission", Gil Tene);
- uncorrected latency = completion − actual send (what a closed-loop tool reports).

A request sent more than ``late_threshold_us`` after its intended start counts as **late**; a
scheduled request never sent (still queued when the run stopped, or not taken because
``max_requests`` were) counts as **skipped** in the second of its intended start.

Why asyncio + uvloop + httptools on raw transports: one event loop drives every connection
without a thread or greenlet per request (uvloop's libuv transports and httptools' C parser keep
the per-request Python work to a few callbacks, the HdrHistogram record included), and the
schedule is woken by a timerfd with µs precision (:class:`~meshlab.load.schedule.WakeTimer`)
instead of the loop's millisecond timers. All timestamps are ``time.monotonic_ns()``.
Percentiles are computed after the run (the recorder only encodes a second's histogram), so
recording never stalls the loop.

Stopping (as the Locust runner): at ``duration_s`` no request is started any more, requests in
flight are waited for (up to ``timeout_s + 1`` s) and recorded, queued ones are skipped; at
``max_requests`` taken the schedule stops and the run ends when all of them completed; on
:meth:`OpenLoop.stop` (the runner's SIGTERM/SIGINT) likewise at once. A request without a
complete response within ``timeout_s`` of its send (connect included) is recorded with status 0
and its connection aborted.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from meshlab.load.http_conn import Connection, request_bytes
from meshlab.load.recorder import NO_RESPONSE, Recorder
from meshlab.load.schedule import WakeTimer, monotonic_ns, offsets_s
from meshlab.load.spec import LoadSpec

LATE_THRESHOLD_US = 1000
"""A request sent more than this many µs after its intended start counts as late."""
DRAIN_MARGIN_S = 1.0
"""Seconds beyond ``timeout_s`` the end of a run waits for requests in flight."""
SWEEP_S = 0.05
"""Period of the per-request timeout check, in seconds (timeouts fire up to this late)."""


class _Request:
    __slots__ = ("intended_ns", "sent_ns")

    def __init__(self, intended_ns: int) -> None:
        self.intended_ns = intended_ns
        self.sent_ns = 0


class OpenLoop:
    """One open-loop run on the current event loop (see the module docstring).

    Args:
        spec: a validated ``mode="open-loop"`` spec (``rate_per_s`` set).
        late_threshold_us: lateness beyond which a send counts as late, µs.

    Attributes:
        recorder: the run's recorder (``open_loop=True``), created by :meth:`run`.
        taken: schedule entries taken (sent or queued).
        in_flight: requests sent and not completed.
    """

    def __init__(self, spec: LoadSpec, late_threshold_us: int = LATE_THRESHOLD_US) -> None:
        parts = urlsplit(spec.url)
        self.spec = spec
        self.late_threshold_us = late_threshold_us
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":  # like Locust's FastHttpUser (insecure=True): no verification
            self._ssl = ssl.create_default_context()
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE
        self._request = request_bytes(parts.netloc, urlunsplit(("", "", parts.path or "/",
                                                                parts.query, "")))
        self._timeout_ns = round(spec.timeout_s * 1e9)
        self._late_ns = late_threshold_us * 1000
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._pending: deque[_Request] = deque()
        self._open = 0  # connections open or connecting
        self.taken = 0
        self.in_flight = 0
        self._stopping = False
        self.recorder: Recorder | None = None

    def __repr__(self) -> str:
        return (f"OpenLoop(rate_per_s={self.spec.rate_per_s}, taken={self.taken}, "
                f"in_flight={self.in_flight}, queued={len(self._pending)}, open={self._open})")

    async def run(self) -> dict[str, Any]:
        """Run the schedule to its end and return the §2 result (open-loop keys included)."""
        spec = self.spec
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._drained = self._loop.create_future()
        self._offsets = offsets_s(spec.distribution, spec.rate_per_s or 0.0, spec.duration_s,
                                  spec.seed)
        self._t0_ns = monotonic_ns()
        start_epoch_s = time.time()
        self._end_ns = self._t0_ns + round(spec.duration_s * 1e9)
        self.recorder = Recorder(spec.duration_s, self._t0_ns / 1e9, open_loop=True)
        self._next_ns: int | None = None
        self._advance()  # the first offset is 0: the first request is due at t0
        self._timer = WakeTimer(self._loop, self._tick)
        self._timer.arm_ns(self._t0_ns)
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop)
        try:
            await self._stopped
            if self.in_flight:
                try:
                    await asyncio.wait_for(asyncio.shield(self._drained),
                                           spec.timeout_s + DRAIN_MARGIN_S)
                except TimeoutError:
                    pass  # still unanswered: not recorded (as the Locust runner)
            end_ns = monotonic_ns()
            self.recorder.finish(end_ns / 1e9)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)
            self._sweeper.cancel()
            self._timer.close()
            for conn in [*self._idle, *self._busy]:
                conn.closed = True
                conn.close(abort=conn.request is not None)
        head = {"tool": "meshlab", "mode": "open-loop", "target_url": spec.url,
                "users": spec.users, "rate_per_s": spec.rate_per_s,
                "duration_s": spec.duration_s, "distribution": spec.distribution,
                "connections": spec.connections, "processes": 1,
                "late_threshold_us": self.late_threshold_us}
        return self.recorder.result(head, start_epoch_s, (end_ns - self._t0_ns) / 1e9)

    # -- the schedule ------------------------------------------------------------------------

    def _advance(self) -> None:
        """Move ``_next_ns`` to the next schedule entry (None past the end)."""
        offset_s = next(self._offsets, None)
        self._next_ns = None if offset_s is None else self._t0_ns + round(offset_s * 1e9)

    def _tick(self) -> None:
        """Timer callback: start every request whose intended start has come, re-arm."""
        if self._stopping:
            return
        now_ns = monotonic_ns()
        cap = self.spec.max_requests
        while self._next_ns is not None and self._next_ns <= now_ns:
            if cap is not None and self.taken >= cap:
                break
            self.taken += 1
            self._dispatch(_Request(self._next_ns))
            self._advance()
        if now_ns >= self._end_ns:
            self.stop()
            return
        capped = cap is not None and self.taken >= cap
        due_ns = self._end_ns if self._next_ns is None or capped else min(self._next_ns,
                                                                           self._end_ns)
        self._timer.arm_ns(due_ns)

    def stop(self) -> None:
        """Stop starting requests (idempotent): queued and not-yet-taken entries intended
        before now are skipped; requests in flight are still waited for by :meth:`run`."""
        if self._stopping:
            return
        self._stopping = True
        now_ns = min(monotonic_ns(), self._end_ns)
        assert self.recorder is not None
        for request in self._pending:
            self.recorder.skip(request.intended_ns / 1e9)
        self._pending.clear()
        while self._next_ns is not None and self._next_ns < now_ns:
            self.recorder.skip(self._next_ns / 1e9)
            self._advance()
        for conn in self._idle:
            conn.closed = True
            self._open -= 1
            conn.close()
        self._idle.clear()
        if not self._stopped.done():
            self._stopped.set_result(None)
        self._check_drained()

    # -- requests and connections ------------------------------------------------------------

    def _dispatch(self, request: _Request) -> None:
        if self._idle:
            self._send(self._idle.pop(), request)
        elif self._open < self.spec.connections:
            self._connect(request)
        else:
            self._pending.append(request)

    def _send(self, conn: Connection, request: _Request) -> None:
        request.sent_ns = monotonic_ns()
        conn.request = request
        self._busy.add(conn)
        self.in_flight += 1
        conn.send(self._request)

    def _connect(self, request: _Request) -> None:
        """Open a connection for ``request`` (its send time is the start of the connect)."""
        self._open += 1
        conn = Connection(self)
        request.sent_ns = monotonic_ns()
        conn.request = request
        self.in_flight += 1
        self._loop.create_task(self._open_connection(conn))

    async def _open_connection(self, conn: Connection) -> None:
        try:
            await asyncio.wait_for(self._loop.create_connection(
                lambda: conn, self._host, self._port, ssl=self._ssl), self.spec.timeout_s)
        except (OSError, TimeoutError, ssl.SSLError):
            self.lose(conn)
            return
        if conn.closed:
            conn.close()
            return
        self._busy.add(conn)
        conn.send(self._request)

    def complete(self, conn: Connection, status: int, keep_alive: bool) -> None:
        """A response arrived on ``conn``: record it, then reuse or close the connection."""
        request = conn.request
        if request is None or conn.closed:
            return  # an unsolicited response: nothing was asked
        self._finish_request(conn, status)
        if keep_alive and not self._stopping:
            if self._pending:
                self._send(conn, self._pending.popleft())
            else:
                self._idle.append(conn)
        else:
            self._give_up(conn, abort=False)
        self._check_drained()

    def lose(self, conn: Connection) -> None:
        """``conn`` failed (reset, EOF, bad response, connect error, timeout): its request in
        flight is recorded with status 0 and a replacement may be opened for queued ones."""
        if conn.request is not None:
            self._finish_request(conn, NO_RESPONSE)
        self._give_up(conn, abort=True)
        self._check_drained()

    def _finish_request(self, conn: Connection, status: int) -> None:
        now_ns = monotonic_ns()
        request = conn.request
        conn.request = None
        self._busy.discard(conn)
        self.in_flight -= 1
        assert self.recorder is not None
        self.recorder.record(status, (now_ns - request.intended_ns) / 1000.0, now_ns / 1e9,
                             uncorrected_us=(now_ns - request.sent_ns) / 1000.0,
                             late=request.sent_ns - request.intended_ns > self._late_ns)
        if (self.spec.max_requests is not None
                and self.recorder.requests >= self.spec.max_requests):
            self.stop()

    def _give_up(self, conn: Connection, abort: bool) -> None:
        """Close ``conn`` once, freeing its slot for a queued request."""
        if conn.closed:
            return
        conn.closed = True
        self._open -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        conn.close(abort=abort)
        if self._pending and not self._stopping:
            self._connect(self._pending.popleft())

    def _sweep(self) -> None:
        """Fail requests older than ``timeout_s`` on connected connections (connects time out
        in :meth:`_open_connection`)."""
        now_ns = monotonic_ns()
        for conn in [c for c in self._busy if c.request is not None
                     and now_ns - c.request.sent_ns > self._timeout_ns]:
            self.lose(conn)
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def _check_drained(self) -> None:
        if self._stopping and self.in_flight == 0 and not self._drained.done():
            self._drained.set_result(None)


def run_open_loop(spec: LoadSpec) -> dict[str, Any]:
    """Run ``spec`` on a fresh uvloop event loop in this process and return its §2 result.

    Args:
        spec: a validated open-loop spec.

    Returns:
        The result as a JSON-ready dict (CONTRACTS.md §2, open-loop keys included).
    """
    import uvloop

    return uvloop.run(OpenLoop(spec).run())
