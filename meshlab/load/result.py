"""A load's result (CONTRACTS.md §2): :class:`LoadResult` and its per-second :class:`SeriesPoint`.

The runner writes the §2 JSON; :meth:`LoadResult.from_dict` reads it (and a journal's copy),
:meth:`LoadResult.to_dict` writes the journal form. In a dry run nothing was measured:
:meth:`LoadResult.not_measured` is the load as planned (URL, users, rate, duration, mode from
its spec) with every measured field a :class:`~meshlab.missing.Missing` labelled
``load '<name>' <field>``, written to the journal as ``null`` with ``not_measured`` saying so.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from hdrh.histogram import HdrHistogram

from meshlab.errors import LabError
from meshlab.load.hdr import decode
from meshlab.load.spec import LoadSpec
from meshlab.missing import is_missing, not_measured

#: The fields of a result a run measures (the rest come from the spec).
MEASURED = ("start_epoch_s", "end_epoch_s", "requests", "errors", "status_counts", "tps",
            "error_rate", "latency_us", "hdr", "series")
#: Measured only by an open-loop load (None for a closed-loop one).
OPEN_LOOP_MEASURED = ("latency_uncorrected_us", "hdr_uncorrected", "late", "skipped",
                      "late_threshold_us")
NOT_MEASURED = "dry run: nothing was sent, nothing measured"


@dataclass
class SeriesPoint:
    """One second of a load run, bucketed by request completion time.

    Attributes:
        t_s: seconds since ``start_epoch_s`` (0, 1, 2, ...).
        requests: requests completed in this second.
        errors: of those, non-2xx/3xx or without response.
        status_counts: requests per status (string key, ``"0"`` = no response).
        p50_us: median latency in µs, None without requests (likewise the others).
        p90_us: 90th percentile latency in µs.
        p99_us: 99th percentile latency in µs.
        max_us: largest latency in µs.
        hdr: base64 HdrHistogram of this second's latencies in µs (:mod:`meshlab.load.hdr`),
            None without requests or in results written before it was recorded.
        p50_uncorrected_us: open loop: median latency from the actual send, µs (likewise
            ``p90_``/``p99_``/``max_uncorrected_us`` and ``hdr_uncorrected``); None otherwise.
        late: open loop: requests completed in this second that were sent late.
        skipped: open loop: requests intended in this second and never sent.
    """

    t_s: int
    requests: int
    errors: int
    status_counts: dict[str, int]
    p50_us: int | None
    p90_us: int | None
    p99_us: int | None
    max_us: int | None
    hdr: str | None = None
    p50_uncorrected_us: int | None = None
    p90_uncorrected_us: int | None = None
    p99_uncorrected_us: int | None = None
    max_uncorrected_us: int | None = None
    hdr_uncorrected: str | None = None
    late: int | None = None
    skipped: int | None = None


OPEN_LOOP_KEYS = frozenset((
    "distribution", "connections", "latency_uncorrected_us", "hdr_uncorrected", "late",
    "skipped", "late_threshold_us", "p50_uncorrected_us", "p90_uncorrected_us",
    "p99_uncorrected_us", "max_uncorrected_us"))
"""Result and series keys only open-loop results have (CONTRACTS.md §2); :meth:`LoadResult.
to_dict` leaves them out when they are None (a closed-loop result)."""


def _without_unset(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items()
            if value is not None or key not in OPEN_LOOP_KEYS}


@dataclass
class LoadResult:
    """A load run's outcome: the fields of CONTRACTS.md §2 plus the journal ``name``.

    Attributes:
        tool: ``"locust"`` (closed loop) or ``"meshlab"`` (open loop).
        mode: ``"closed-loop"`` (a user sends its next request after the previous finished)
            or ``"open-loop"`` (requests started on a schedule; ``latency_us``, ``hdr`` and the
            series' percentiles are then corrected: measured from each intended start).
        target_url: the URL requested.
        users: concurrent users.
        rate_per_s: requested aggregate rate in requests/s, None for unthrottled.
        duration_s: planned duration in seconds (the actual one is :attr:`elapsed_s`).
        start_epoch_s: wall-clock start, Unix seconds.
        end_epoch_s: wall-clock end, Unix seconds.
        requests: completed requests (including errors).
        errors: requests with a non-2xx/3xx status or without response.
        status_counts: requests per status (``"0"`` = no response: connect error, timeout).
        tps: requests per second of actual run time.
        error_rate: errors / requests (0.0 without requests).
        latency_us: ``min, mean, p50, p90, p99, p999, max`` in µs (None without requests).
        hdr: base64 HdrHistogram of all latencies in µs (see :mod:`meshlab.load.hdr`).
        series: one :class:`SeriesPoint` per second.
        processes: runner processes whose results were merged into this one
            (:mod:`meshlab.load.merge`); 1 in results written before it was recorded.
        distribution: open loop: ``"constant"`` or ``"poisson"`` (None for closed loop, like
            the following fields).
        connections: open loop: the connection pool size.
        latency_uncorrected_us: open loop: as ``latency_us``, measured from the actual send.
        hdr_uncorrected: open loop: base64 HdrHistogram of those latencies, µs.
        late: open loop: requests sent more than ``late_threshold_us`` after their intended
            start.
        skipped: open loop: scheduled requests never sent.
        late_threshold_us: open loop: the lateness threshold, µs.
        name: the spec's name (not part of the runner's file; included in :meth:`to_dict`).
    """

    tool: str
    mode: str
    target_url: str
    users: int
    rate_per_s: float | None
    duration_s: float
    start_epoch_s: float
    end_epoch_s: float
    requests: int
    errors: int
    status_counts: dict[str, int]
    tps: float
    error_rate: float
    latency_us: dict[str, float | None]
    hdr: str
    series: list[SeriesPoint] = field(default_factory=list)
    distribution: str | None = None
    connections: int | None = None
    latency_uncorrected_us: dict[str, float | None] | None = None
    hdr_uncorrected: str | None = None
    late: int | None = None
    skipped: int | None = None
    late_threshold_us: int | None = None
    processes: int = 1
    name: str = ""

    def __repr__(self) -> str:
        return (f"LoadResult(name={self.name!r}, requests={self.requests}, "
                f"errors={self.errors}, tps={round(self.tps, 1)}, "
                f"p99_us={self.latency_us.get('p99')})")

    @property
    def measured(self) -> bool:
        """False for a dry run's :meth:`not_measured` result."""
        return not is_missing(self.requests)

    def summary(self) -> str:
        """``"<requests> requests, <tps> TPS"`` (the journal's activity output), or
        ``"not measured (dry run)"``."""
        if not self.measured:
            return "not measured (dry run)"
        return f"{self.requests} requests, {self.tps:.1f} TPS"

    @property
    def elapsed_s(self) -> float:
        """Actual run time in seconds (``end_epoch_s - start_epoch_s``)."""
        return self.end_epoch_s - self.start_epoch_s

    def histogram(self) -> HdrHistogram:
        """The decoded latency histogram (µs); merge several with
        :func:`meshlab.load.hdr.merge`."""
        return decode(self.hdr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the §2 fields, preceded by ``name`` when it is set (journal form)."""
        data = _without_unset(asdict(self))
        if self.measured:
            data["series"] = [_without_unset(point) for point in data["series"]]
        else:
            data["not_measured"] = NOT_MEASURED
        name = data.pop("name")
        return {"name": name, **data} if name else data

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "") -> LoadResult:
        """Build a result from the §2 JSON (as written by the runner or stored in a journal).

        Args:
            data: the decoded JSON object.
            name: journal name, used when ``data`` has no ``name``.

        Raises:
            LabError: a field is missing or malformed.
        """
        try:
            series = [SeriesPoint(**point) for point in data["series"]]
            kwargs = {key: data[key] for key, spec in cls.__dataclass_fields__.items()
                      if key not in ("series", "name")
                      and (key in data or spec.default is MISSING)}
        except (KeyError, TypeError) as exc:
            raise LabError(f"malformed load result: missing or bad field {exc}") from exc
        return cls(**kwargs, series=series, name=data.get("name") or name)

    @classmethod
    def not_measured(cls, spec: LoadSpec) -> LoadResult:
        """A dry run's result of ``spec``: the planned load, each measured field (and an open
        loop's) a :class:`~meshlab.missing.Missing` named ``load '<name>' <field>``.

        Raises:
            RuntimeError: not in a dry run (:func:`meshlab.missing.not_measured`).
        """
        open_loop = spec.mode == "open-loop"
        missing = {key: not_measured(f"load {spec.name!r} {key}") for key in MEASURED
                   + (OPEN_LOOP_MEASURED if open_loop else ())}
        planned = {"tool": "meshlab" if open_loop else "locust", "mode": spec.mode,
                   "target_url": spec.url, "users": spec.users, "rate_per_s": spec.rate_per_s,
                   "duration_s": spec.duration_s, "processes": spec.processes,
                   "name": spec.name}
        if open_loop:
            planned.update(distribution=spec.distribution, connections=spec.connections)
        unset = {f.name: None for f in fields(cls) if f.name not in {*missing, *planned}}
        return cls(**{**unset, **planned, **missing})
