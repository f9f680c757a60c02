"""Open-loop (fixed-rate) HTTP/1.1 load generator, run inside the client netns by ``sidecar.py``.

``python _loadgen.py '<json>'`` with ``{"host", "port", "path", "authority", "rate_rps",
"warmup_s", "duration_s", "conns"}``. Send times are scheduled at ``start + i / rate_rps``;
each request's latency is measured from its *scheduled* time (not from when a connection became
free), so a stalled proxy shows up in the percentiles instead of silently lowering the rate
(no coordinated omission, as wrk2 does). ``conns`` keep-alive connections take scheduled
requests from one queue. asyncio runs on a ``select()`` selector: its timeouts have µs
resolution where epoll's are rounded up to whole milliseconds.

Output (stdout, one JSON object a line): ``{"event": "measure_start"}`` when warm-up ends,
``{"event": "measure_end"}`` when the last measured request is answered, then the result
``{"event": "result", "requests", "errors", "elapsed_s", "achieved_rps", "latency_us": {p50,
p90, p99, p999, max, mean}, "hdr": <base64 HdrHistogram of latencies in µs>}``.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import sys
import time

from hdrh.histogram import HdrHistogram

MAX_LATENCY_US = 60_000_000


def emit(obj: dict) -> None:
    """One JSON line on stdout, flushed (the parent reacts to the events)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      request: bytes) -> int:
    """Send ``request`` and read the whole response; returns its status code.

    Raises:
        ConnectionError / asyncio.IncompleteReadError: the connection broke.
    """
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run(op: dict) -> dict:
    """Drive the fixed-rate load described by ``op`` and return the result record."""
    rate, conns = float(op["rate_rps"]), int(op["conns"])
    warmup_n = int(rate * float(op["warmup_s"]))
    total_n = warmup_n + int(rate * float(op["duration_s"]))
    request = (f"GET {op['path']} HTTP/1.1\r\nHost: {op['authority']}\r\n"
               "User-Agent: meshlab-bench\r\n\r\n").encode()
    hist = HdrHistogram(1, MAX_LATENCY_US, 3)
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    state = {"done": 0, "errors": 0, "measured_done": 0}
    finished = asyncio.Event()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(op["host"], op["port"])
        while True:
            i, scheduled = await queue.get()
            try:
                status = await one_request(reader, writer, request)
                ok = status == 200
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection(op["host"], op["port"])
            now = time.perf_counter()
            state["done"] += 1
            if i >= warmup_n:
                if ok:
                    hist.record_value(max(1, int((now - scheduled) * 1e6)))
                else:
                    state["errors"] += 1
                state["measured_done"] += 1
                if state["measured_done"] == total_n - warmup_n:
                    finished.set()

    workers = [asyncio.ensure_future(worker()) for _ in range(conns)]
    await asyncio.sleep(0.05)  # let the connections open before the schedule starts
    loop_start = time.perf_counter()
    measure_start = 0.0
    for i in range(total_n):
        scheduled = loop_start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if i == warmup_n:
            emit({"event": "measure_start"})
            measure_start = time.perf_counter()
        queue.put_nowait((i, scheduled))
    await asyncio.wait_for(finished.wait(), timeout=30)
    elapsed = time.perf_counter() - measure_start
    emit({"event": "measure_end"})
    for w in workers:
        w.cancel()
    measured = total_n - warmup_n
    return {"event": "result", "requests": measured, "errors": state["errors"],
            "elapsed_s": elapsed, "achieved_rps": measured / elapsed,
            "latency_us": {"p50": hist.get_value_at_percentile(50),
                           "p90": hist.get_value_at_percentile(90),
                           "p99": hist.get_value_at_percentile(99),
                           "p999": hist.get_value_at_percentile(99.9),
                           "max": hist.get_max_value(), "mean": hist.get_mean_value()},
            "hdr": hist.encode().decode()}


def main() -> None:
    """Parse the JSON op from argv, run, print the result line."""
    op = json.loads(sys.argv[1])
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        emit(loop.run_until_complete(run(op)))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
