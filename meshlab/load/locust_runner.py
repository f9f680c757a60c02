"""Headless Locust load runner, one process per load, recording every request in µs.

Usage (run inside the client pod's netns by the lab; needs nothing but the URL)::

    python -m meshlab.load.locust_runner --url URL --users N [--rate-per-s R] --duration-s D
        [--max-requests M] --timeout-s T --out result.json
    python -m meshlab.load.locust_runner --mode open-loop --url URL --rate-per-s R
        [--distribution constant|poisson] [--connections N] [--seed S] --duration-s D
        [--max-requests M] --timeout-s T --out result.json

``--mode open-loop`` runs :mod:`meshlab.load.open_loop` (asyncio, no gevent, no Locust) instead;
stopping, the result file and the exit statuses are the same.

Locust runs through its library API (``Environment`` + local runner) with a generated
``FastHttpUser`` that GETs the URL over keep-alive connections. With ``--rate-per-s`` each user
paces itself with ``constant_throughput(R / N)``, so the aggregate rate is about R (closed loop: a
slow target lowers it). Every request is recorded from Locust's ``request`` event
(``response_time`` in float ms from ``perf_counter``) into an HdrHistogram in **microseconds**
(Locust's own statistics, rounded to ms, are not used).

Stopping: after D seconds, hard (requests still in flight are cancelled and not recorded), at M
requests if given (no request beyond the M-th is sent; the run ends when all M have completed), or
on SIGTERM/SIGINT (early stop, the partial result is written). The result (CONTRACTS.md §2) is
written atomically: a temporary file in the same directory, then ``os.replace``. Exit status:
0 result written, 1 the run failed (message on stderr), 2 bad arguments, 3 the hard-stop alarm
fired (the process hung past D + 20 s).

Gevent's monkey-patching happens in :func:`run`, only in this process; argument checking does
not import gevent or locust.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from meshlab.errors import ConfigError
from meshlab.load.recorder import NO_RESPONSE, Recorder
from meshlab.load.spec import DEFAULT_CONNECTIONS, DISTRIBUTIONS, MODES, LoadSpec

ALARM_MARGIN_S = 20
"""Seconds past ``duration_s`` after which SIGALRM ends a hung runner (exit 3)."""
QUIT_TIMEOUT_S = 5.0
"""Seconds allowed for Locust to kill its users after the stop."""


def parse_args(argv: list[str] | None = None) -> tuple[LoadSpec, Path]:
    """Parse and validate the command line (exits 2 with a message on stderr when invalid).

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The validated spec and the output path.
    """
    parser = argparse.ArgumentParser(
        prog="python -m meshlab.load.locust_runner",
        description="Drive HTTP GET load with Locust and write a µs-resolution result JSON.")
    parser.add_argument("--url", required=True, help="target http(s) URL")
    parser.add_argument("--mode", choices=MODES, default="closed-loop",
                        help="closed-loop: Locust users (default); open-loop: a request "
                             "schedule at --rate-per-s, latency corrected for coordinated "
                             "omission")
    parser.add_argument("--users", type=int, default=None,
                        help="concurrent users (>= 1; closed-loop, required there)")
    parser.add_argument("--rate-per-s", type=float, default=None,
                        help="aggregate requests/s (default: as fast as possible)")
    parser.add_argument("--duration-s", type=float, required=True,
                        help="run time in seconds, hard stop (0 < D <= 3600)")
    parser.add_argument("--max-requests", type=int, default=None,
                        help="stop after this many requests")
    parser.add_argument("--timeout-s", type=float, required=True,
                        help="connect and per-read timeout of each request, seconds")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="constant",
                        help="open-loop inter-arrival times (default constant)")
    parser.add_argument("--connections", type=int, default=None,
                        help=f"open-loop connection pool size (default --users, or "
                             f"{DEFAULT_CONNECTIONS} without it)")
    parser.add_argument("--seed", type=int, default=0, help="open-loop Poisson RNG seed")
    parser.add_argument("--out", type=Path, required=True, help="result JSON path")
    args = parser.parse_args(argv)
    if args.users is None and args.mode == "closed-loop":
        parser.error("--users: required in closed-loop mode")
    if args.users is None and args.connections is None:
        args.connections = DEFAULT_CONNECTIONS
    try:
        spec = LoadSpec(url=args.url, users=1 if args.users is None else args.users,
                        rate_per_s=args.rate_per_s,
                        duration_s=args.duration_s, max_requests=args.max_requests,
                        timeout_s=args.timeout_s, mode=args.mode,
                        distribution=args.distribution, connections=args.connections,
                        seed=args.seed)
    except ConfigError as exc:
        field, _, message = str(exc).removeprefix("LoadSpec.").partition(":")
        parser.error(f"--{field.replace('_', '-')}:{message}")
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {str(args.out.parent)!r} does not exist")
    return spec, args.out


def status_of(response: Any, exception: BaseException | None, bad_status: type) -> int:
    """The status to record for one Locust request event.

    Args:
        response: the ``FastResponse`` (``ErrorResponse`` has ``status_code`` 0).
        exception: the event's exception; for an HTTP error status it is ``bad_status``.
        bad_status: Locust's exception class for "a response with a non-2xx/3xx status".

    Returns:
        The HTTP status, or 0 when no complete response arrived (connect error, reset, timeout,
        body cut short).
    """
    if exception is not None and not isinstance(exception, bad_status):
        return NO_RESPONSE
    return int(getattr(response, "status_code", 0) or NO_RESPONSE)


def run(spec: LoadSpec) -> dict[str, Any]:
    """Run the load in this process (monkey-patches it with gevent) and return the §2 result.

    Args:
        spec: the validated load.

    Returns:
        The result as a JSON-ready dict (CONTRACTS.md §2).
    """
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.event
    from locust import constant, constant_throughput, task
    from locust.contrib.fasthttp import FastHttpUser, LocustBadStatusCode
    from locust.env import Environment

    parts = urlsplit(spec.url)
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    per_user_rate = spec.rate_per_s / spec.users if spec.rate_per_s else None
    stop = gevent.event.Event()  # no new request starts once set (end, signal, max_requests)
    parked = gevent.event.Event()  # never set: users park on it after ``stop``
    issued = 0
    in_flight = 0
    unexpected: Counter[str] = Counter()  # exceptions the HTTP client raised past Locust

    class MeshlabUser(FastHttpUser):
        host = f"{parts.scheme}://{parts.netloc}"
        network_timeout = spec.timeout_s
        connection_timeout = spec.timeout_s
        wait_time = constant_throughput(per_user_rate) if per_user_rate else constant(0)

        @task
        def get_target(self) -> None:
            nonlocal issued, in_flight
            if stop.is_set() or (spec.max_requests is not None and issued >= spec.max_requests):
                parked.wait()  # idle until quit (a user that exits confuses Locust's stop)
                return
            issued += 1
            in_flight += 1
            sent_s = time.perf_counter()
            try:
                self.client.get(path, name="target", allow_redirects=False)
            except Exception as exc:  # noqa: BLE001 - an error Locust does not report as a request
                unexpected[type(exc).__name__] += 1
                now_s = time.perf_counter()
                record(NO_RESPONSE, (now_s - sent_s) * 1e6, now_s)
            finally:
                in_flight -= 1

    # all users start at once; Locust's "spawn rate > 100" advice is about ramps, not this
    logging.getLogger("locust.runners").addFilter(
        lambda record: "spawn rate is very high" not in record.getMessage())
    env = Environment(user_classes=[MeshlabUser], host=MeshlabUser.host)
    runner = env.create_local_runner()
    # Locust's own statistics (whole-ms response times) are never read here: switch off their
    # per-request bookkeeping on this environment's RequestStats, so the µs recording above is
    # the only per-request cost the generator adds to a plain FastHttpUser.
    env.stats.log_request = lambda *args, **kwargs: None  # type: ignore[method-assign]
    env.stats.log_error = lambda *args, **kwargs: None  # type: ignore[method-assign]
    start_s = time.perf_counter()
    start_epoch_s = time.time()
    recorder = Recorder(spec.duration_s, start_s)

    def record(status: int, latency_us: float, now_s: float) -> None:
        recorder.record(status, latency_us, now_s)
        if spec.max_requests is not None and recorder.requests >= spec.max_requests:
            stop.set()

    def on_request(response_time: float, response: Any = None,
                   exception: BaseException | None = None, **_kwargs: Any) -> None:
        record(status_of(response, exception, LocustBadStatusCode), response_time * 1000.0,
               time.perf_counter())

    env.events.request.add_listener(on_request)
    handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    runner.start(spec.users, spawn_rate=spec.users)
    stop.wait(timeout=max(0.0, start_s + spec.duration_s - time.perf_counter()))
    stop.set()
    # Graceful end: requests already sent complete (bounded by their timeout) and are recorded,
    # so the tail is not cut off and the server sees no aborted request (no DC at the sidecar).
    drain_deadline_s = time.perf_counter() + spec.timeout_s + 1.0
    while in_flight and time.perf_counter() < drain_deadline_s:
        gevent.sleep(0.002)
    end_s = time.perf_counter()
    recorder.finish(end_s)  # closes the books: anything completing from here on is ignored
    with gevent.Timeout(QUIT_TIMEOUT_S, False):
        runner.quit()
    for handler in handlers:
        handler.cancel()
    if unexpected:
        sys.stderr.write(f"locust_runner: requests recorded as status 0 after unexpected client "
                         f"errors: {dict(unexpected)}\n")

    head = {"tool": "locust", "mode": "closed-loop", "target_url": spec.url, "users": spec.users,
            "rate_per_s": spec.rate_per_s, "duration_s": spec.duration_s, "processes": 1}
    return recorder.result(head, start_epoch_s, end_s - start_s)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so readers never see a partial file (temp file + rename).

    Args:
        path: destination; its directory must exist.
        data: JSON-ready object.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alarm(signum: int, frame: object) -> None:
    sys.stderr.write("locust_runner: hard stop: still running long after --duration-s\n")
    sys.stderr.flush()
    os._exit(3)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, write the result.

    Args:
        argv: arguments without the program name.

    Returns:
        The exit status (0 on success, 1 when the run failed).
    """
    spec, out = parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(math.ceil(spec.duration_s + spec.timeout_s) + ALARM_MARGIN_S)
    try:
        if spec.mode == "open-loop":
            from meshlab.load.open_loop import run_open_loop

            write_json_atomic(out, run_open_loop(spec))
        else:
            write_json_atomic(out, run(spec))
    except Exception as exc:  # noqa: BLE001 - the process boundary: report any failure
        traceback.print_exc()
        sys.stderr.write(f"locust_runner: load against {spec.url} failed: "
                         f"{type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait on leftover greenlets/threads at interpreter shutdown
