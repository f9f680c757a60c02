"""An HTTP/1.1 server that stalls for a known time at known requests, and the exact latency
distribution an open-loop client at a constant rate must then measure.

The server answers every ``GET`` at once (``200``, body ``ok``, keep-alive) except while it is
*paused*: when the ``n``-th request it has received (1-based, counted over all connections) is
one of ``StallPlan.stall_at``, it pauses for ``stall_s`` seconds — every response, for that
request and for any request arriving meanwhile, is held until the pause ends (a stop-the-world
pause, like a GC or a frozen process). A stall starting while one is running extends the pause
to ``max(end, now + stall_s)``.

Under a constant-rate schedule (request ``i`` intended at ``i / rate``, ``i = 0 … N-1``, sent on
time) request ``n`` arrives at ``(n - 1) / rate``, so the pause covers the schedule window
``[(n-1)/rate, (n-1)/rate + stall_s)`` and a request intended at ``t`` inside it is answered at
the window's end: its **corrected** latency (from the intended start) is ``end - t``, every other
request's is the server's base time (≈ 0). :func:`expected_latencies_us` computes exactly that;
with one stall of ``S`` seconds in ``D = N / rate`` seconds, the ``p``-th percentile is
``S - (1 - p/100) · D`` (e.g. S = 0.5 s, D = 10 s: p99 = 0.4 s, p99.9 = 0.49 s) whatever the rate.
A closed-loop client, or an open-loop one measuring from the actual send, sees only the few
requests that were in flight when the pause began (coordinated omission).

Use in-process (tests)::

    with serve_in_thread(StallPlan(stall_at=(5000,), stall_s=0.5)) as server:
        url = f"http://127.0.0.1:{server.port}/"

or as a process (``benchmarks/load.py`` runs it pinned in a netns)::

    python benchmarks/_stall_server.py --host 10.244.1.3 --port 8081 --stall-at 5000 \
        --stall-s 0.5

which prints ``ready <port>`` once listening and, on SIGTERM/SIGINT, one JSON line
``{"requests": N, "stalls": [{"at_request", "start_s", "end_s"}]}`` (``time.monotonic()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from meshlab.errors import ConfigError
from meshlab.load import hdr

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")


@dataclass(frozen=True)
class StallPlan:
    """When and how long the server pauses.

    Attributes:
        stall_at: 1-based numbers of the requests whose arrival starts a pause.
        stall_s: length of each pause in seconds.

    Raises:
        ConfigError: a request number is < 1 or the pause is not positive.
    """

    stall_at: tuple[int, ...]
    stall_s: float

    def __post_init__(self) -> None:
        if any(not isinstance(n, int) or n < 1 for n in self.stall_at):
            raise ConfigError(f"StallPlan.stall_at: request numbers must be >= 1, "
                              f"got {self.stall_at!r}")
        if not self.stall_s > 0:
            raise ConfigError(f"StallPlan.stall_s: must be > 0 seconds, got {self.stall_s!r}")


@dataclass
class StallServer:
    """The asyncio server (one loop, one thread); see the module docstring for its behaviour.

    Attributes:
        plan: the pauses.
        requests: requests received so far.
        stalls: ``{"at_request", "start_s", "end_s"}`` per pause started (``time.monotonic()``).
        port: the bound port (after :meth:`start`).
    """

    plan: StallPlan
    requests: int = 0
    stalls: list[dict[str, float]] = field(default_factory=list)
    port: int = 0
    _paused_until: float = 0.0

    async def serve(self, host: str, port: int, stop: asyncio.Event,
                    on_ready: Callable[[], None]) -> None:
        """Listen on ``host:port`` (0 = any free port, see :attr:`port`), call ``on_ready``,
        serve until ``stop`` is set, then close every connection.

        Raises:
            OSError: the address could not be bound.
        """
        server = await asyncio.start_server(self._serve, host, port, backlog=1024,
                                            reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        on_ready()
        try:
            await stop.wait()
        finally:
            server.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                now = loop.time()
                if self.requests in self.plan.stall_at:
                    self._paused_until = max(self._paused_until, now + self.plan.stall_s)
                    self.stalls.append({"at_request": self.requests, "start_s": now,
                                        "end_s": self._paused_until})
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.contextmanager
def serve_in_thread(plan: StallPlan, host: str = "127.0.0.1", port: int = 0
                    ) -> Iterator[StallServer]:
    """Run a :class:`StallServer` on its own event loop in a daemon thread.

    Yields:
        The server (``port`` set, ``requests`` and ``stalls`` updated live); it stops on exit.

    Raises:
        OSError: the address could not be bound.
    """
    server = StallServer(plan)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(server.serve(host, port, stop, ready.set))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failed.append(exc)
        finally:
            loop.close()
            ready.set()

    thread = threading.Thread(target=run, name="stall-server", daemon=True)
    thread.start()
    ready.wait()
    if failed:
        raise failed[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=5)


def expected_latencies_us(rate_per_s: float, requests: int, plan: StallPlan,
                          base_us: float = 0.0) -> list[float]:
    """Corrected latency of each request of a constant-rate schedule against ``plan``.

    Args:
        rate_per_s: schedule rate; request ``i`` is intended at ``i / rate_per_s`` seconds.
        requests: number of scheduled requests ``N``.
        plan: the server's pauses.
        base_us: the server's (and network's) time for an unpaused request, in µs.

    Returns:
        ``N`` latencies in µs, measured from each request's intended start, assuming every
        request reaches the server on time (late ones shift a pause by their lateness).
    """
    period_s = 1.0 / rate_per_s
    starts = set(plan.stall_at)
    paused_until_s = 0.0
    out = []
    for i in range(requests):
        t_s = i * period_s
        if i + 1 in starts:
            paused_until_s = max(paused_until_s, t_s + plan.stall_s)
        out.append(max(0.0, paused_until_s - t_s) * 1e6 + base_us)
    return out


def expected_percentiles(rate_per_s: float, requests: int, plan: StallPlan,
                         base_us: float = 0.0) -> dict[str, float | None]:
    """:func:`expected_latencies_us` summarised like a load result's ``latency_us``.

    The values go through the same µs HdrHistogram as the runners'
    (:func:`meshlab.load.hdr.percentiles`), so they compare bucket for bucket.

    Returns:
        ``{"min", "mean", "p50", "p90", "p99", "p999", "max"}`` in µs.
    """
    histogram = hdr.new_histogram()
    for value in expected_latencies_us(rate_per_s, requests, plan, base_us):
        hdr.record_us(histogram, value)
    return hdr.percentiles(histogram)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="HTTP/1.1 server pausing at known requests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--stall-at", default="", help="comma-separated 1-based request numbers")
    ap.add_argument("--stall-s", type=float, default=0.5, help="pause length, seconds")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then print the JSON summary line."""
    args = _parse(argv)
    plan = StallPlan(tuple(int(n) for n in args.stall_at.split(",") if n), args.stall_s)
    server = StallServer(plan)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(server.serve(args.host, args.port, stop,
                                         lambda: print(f"ready {server.port}", flush=True)))
    loop.close()
    stalls = [{**s, "start_s": round(s["start_s"], 6), "end_s": round(s["end_s"], 6)}
              for s in server.stalls]
    print(json.dumps({"requests": server.requests, "stalls": stalls}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
