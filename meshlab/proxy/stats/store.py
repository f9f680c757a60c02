"""Envoy-style stats store (sans-IO; ENVOY.md §3, §4); rendered by :mod:`.stats_render`.

Rules:

- A stat is created on first use by name. Istio's stats matcher decides whether it exists: the
  bootstrap inclusion list (prefixes, suffixes, one regex) plus ``stats_inclusion_regexps``
  (full-match, like Envoy's ``safe_regex``). A rejected name gets a shared null stat whose
  updates are dropped and which is never rendered.
- Counters and gauges change immediately. Histogram samples land in the current interval and
  become visible to ``/stats`` and Prometheus only at :meth:`StatsStore.flush` (Envoy's
  ``stats_flush_interval``, 5 s), as in Envoy.
- Names carry Istio's tag layout: ``cluster.<name>;.<stat>`` and ``http.<prefix>;.<stat>`` when
  delimited tags are on (Istio >= 1.23).
- Histograms keep 2-significant-digit bins (like Envoy's circllhist) for quantiles and the
  Prometheus counts per Envoy default bucket (bins entirely below the bound, as circllhist's
  ``hist_approx_count_below``). Flushing is O(1) per active histogram.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

Tags = tuple[tuple[str, str], ...]

#: ``HistogramSettingsImpl::defaultBuckets`` (ms for time histograms).
DEFAULT_BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
                                      10000, 30000, 60000, 300000, 600000, 1800000, 3600000)
#: Quantiles ``/stats`` prints for each histogram.
SUPPORTED_QUANTILES: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1)

#: Istio bootstrap ``stats_matcher.inclusion_list`` defaults (ENVOY.md §3).
ISTIO_INCLUSION_PREFIXES = ("reporter=", "component", "istio", "cluster_manager",
                            "listener_manager", "server", "cluster.xds-grpc", "wasm")
ISTIO_INCLUSION_SUFFIXES = ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")
ISTIO_INCLUSION_REGEXPS = (r"vhost\..*\.route\..*",)


class StatsMatcher:
    """Istio's proxy stats matcher (Envoy ``stats_matcher.inclusion_list``; ENVOY.md §3).

    A name is kept when it starts with one of Istio's required prefixes or ``prefixes``, ends
    with one of the required suffixes or ``suffixes``, or full-matches the required regex or one
    of ``regexps`` (Envoy ``safe_regex`` is a full match). Istio builds the extra lists from the
    ``sidecar.istio.io/statsInclusion{Prefixes,Suffixes,Regexps}`` annotations, else from
    ``proxy.istio.io/config`` ``proxyStatsMatcher`` (``I:pkg/bootstrap/config.go``).

    Args:
        regexps: extra full-match regexps.
        prefixes: extra prefixes.
        suffixes: extra suffixes.
        include_all: keep every stat (plain Envoy without a matcher).

    Raises:
        re.error: a regexp does not compile.
    """

    def __init__(self, regexps: Iterable[str] = (), *, prefixes: Iterable[str] = (),
                 suffixes: Iterable[str] = (), include_all: bool = False) -> None:
        self.include_all = include_all
        self.regexps = tuple(regexps)
        self.prefixes = (*ISTIO_INCLUSION_PREFIXES, *prefixes)
        self.suffixes = (*ISTIO_INCLUSION_SUFFIXES, *suffixes)
        self._compiled = [re.compile(r) for r in (*ISTIO_INCLUSION_REGEXPS, *self.regexps)]

    def accepts(self, name: str) -> bool:
        """True when a stat called ``name`` would be created."""
        if self.include_all or name.startswith(self.prefixes) or name.endswith(self.suffixes):
            return True
        return any(rx.fullmatch(name) for rx in self._compiled)

    def __repr__(self) -> str:
        return (f"StatsMatcher(prefixes={self.prefixes!r}, suffixes={self.suffixes!r}, "
                f"regexps={self.regexps!r}, include_all={self.include_all})")


class Counter:
    """Monotonic counter."""

    __slots__ = ("name", "tags", "used", "value")
    kind = "counter"

    def __init__(self, name: str, tags: Tags | None = None) -> None:
        self.name, self.tags, self.value, self.used = name, tags, 0, False

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount
        self.used = True

    def __repr__(self) -> str:
        return f"Counter({self.name!r}={self.value})"


class Gauge:
    """Up/down value.

    ``absolute`` is True once the gauge was :meth:`set`: its value is a reading (a limit, a
    state), not a sum of ``inc``/``dec`` deltas, so worker copies of it are not added up
    (:mod:`meshlab.proxy.workers.snapshot`).
    """

    __slots__ = ("absolute", "name", "tags", "used", "value")
    kind = "gauge"

    def __init__(self, name: str, tags: Tags | None = None) -> None:
        self.name, self.tags, self.value, self.used, self.absolute = name, tags, 0, False, False

    def set(self, value: int) -> None:
        """Set the value."""
        self.value = value
        self.used = self.absolute = True

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount
        self.used = True

    def dec(self, amount: int = 1) -> None:
        """Subtract ``amount``."""
        self.value -= amount
        self.used = True

    def __repr__(self) -> str:
        return f"Gauge({self.name!r}={self.value})"


#: Memo of :func:`_bin_of` by recorded value (durations in ms and byte counts repeat a lot).
#: Bin of each integral sample value seen (byte counts, TCP_INFO fields, whole ms). Float
#: durations are almost never seen twice, so they are not kept: keeping them filled the memo
#: to its cap, 11 MB per worker, the RSS growth of the 30-minute soak.
_BINS: dict[float, tuple[float, float]] = {}
_BINS_MAX = 1 << 12


def _bin_of(value: float) -> tuple[float, float]:
    """(lower bound, width) of the 2-significant-digit bin holding ``value`` (>= 0)."""
    if value <= 0:
        return (0.0, 0.0)
    exp = math.floor(math.log10(value)) - 1
    width = 10.0 ** exp
    mantissa = math.floor(value / width + 1e-9)
    return (round(mantissa * width, 12), width)


class _HistData:
    __slots__ = ("bins", "count", "sum")

    def __init__(self) -> None:
        self.bins: dict[tuple[float, float], int] = {}
        self.count = 0
        self.sum = 0.0

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Approximate quantiles (circllhist-like interpolation inside a bin) for each of ``qs``
        (ascending), in one pass over the sorted bins; nan when empty."""
        if not self.count:
            return [math.nan] * len(qs)
        items = sorted(self.bins.items())
        out: list[float] = []
        i, seen = 0, 0
        for q in qs:
            rank = q * self.count
            while i < len(items):
                (lower, width), n = items[i]
                if seen + n >= rank:
                    out.append(lower + ((rank - seen) / n if n else 0.0) * width)
                    break
                seen += n
                i += 1
            else:
                lower, width = items[-1][0]
                out.append(lower + width)
        return out

    def counts_below(self, bounds: Sequence[float]) -> list[int]:
        """Samples in bins entirely <= each of ``bounds`` (ascending; circllhist
        ``hist_approx_count_below``), in one pass."""
        uppers = sorted((lower + width, n) for (lower, width), n in self.bins.items())
        out: list[int] = []
        i, acc = 0, 0
        for bound in bounds:
            while i < len(uppers) and uppers[i][0] <= bound:
                acc += uppers[i][1]
                i += 1
            out.append(acc)
        return out


class Histogram:
    """Histogram of non-negative samples (unit in the name, e.g. ``_time`` in ms).

    A sample goes into the open interval and, at once, into the cumulative data, so closing an
    interval at :meth:`flush` is a pointer swap (no merge on the event loop).
    """

    __slots__ = ("_buckets", "_cumulative", "_interval", "_pending", "_quantiles", "_visible",
                 "name", "tags", "used")
    kind = "histogram"

    def __init__(self, name: str, tags: Tags | None = None) -> None:
        self.name, self.tags, self.used = name, tags, False
        self._pending = _HistData()
        self._interval = _HistData()
        self._cumulative = _HistData()
        self._visible = (0, 0.0)  # cumulative (count, sum) as of the last flush
        self._quantiles: list[tuple[float, float]] | None = None  # views of the last flush
        self._buckets: list[int] | None = None

    def record(self, value: float) -> None:
        """Add one sample to the current interval."""
        key = _BINS.get(value)
        if key is None:
            value = max(0.0, float(value))
            key = _bin_of(value)
            if len(_BINS) < _BINS_MAX and value.is_integer():
                _BINS[value] = key
        elif value < 0:
            value = 0.0
        for data in (self._pending, self._cumulative):
            data.bins[key] = data.bins.get(key, 0) + 1
            data.count += 1
            data.sum += value
        self.used = True

    def merge_interval(self, bins: dict[tuple[float, float], int], count: int,
                       total: float) -> None:
        """Add another process's closed interval (its ``bins``, sample ``count`` and sum
        ``total``) to the open interval, as Envoy merges thread-local histograms at flush."""
        if not count:
            return
        for data in (self._pending, self._cumulative):
            got = data.bins
            for key, n in bins.items():
                got[key] = got.get(key, 0) + n
            data.count += count
            data.sum += total
        self.used = True

    def take_interval(self) -> tuple[dict[tuple[float, float], int], int, float] | None:
        """Close the interval (:meth:`flush`) and return what it held as ``(bins, count,
        sum)``, or None when it was empty."""
        pending = self._pending
        self.flush()
        if not pending.count:
            return None
        return pending.bins, pending.count, pending.sum

    def flush(self) -> None:
        """Close the interval: it becomes the "interval" view; "cumulative" includes it.

        An idle histogram (nothing in this interval nor the last) costs one attribute test.
        """
        pending = self._pending
        if not pending.count:
            if self._interval.count:
                self._interval = _HistData()  # empty: the interval view shows nan again
                self._quantiles = None
            return
        self._quantiles = self._buckets = None
        self._interval = pending
        self._pending = _HistData()
        self._visible = (self._cumulative.count, self._cumulative.sum)

    @property
    def count(self) -> int:
        """Cumulative sample count as of the last flush."""
        return self._visible[0]

    @property
    def sum(self) -> float:
        """Cumulative sample sum as of the last flush."""
        return self._visible[1]

    def _flushed_cumulative(self) -> _HistData:
        """Cumulative data without the still-open interval (what Envoy shows)."""
        cum, pending = self._cumulative, self._pending
        if not pending.count:
            return cum
        out = _HistData()
        out.bins = {k: n - pending.bins.get(k, 0) for k, n in cum.bins.items()}
        out.count, out.sum = cum.count - pending.count, cum.sum - pending.sum
        return out

    def quantiles(self) -> list[tuple[float, float]]:
        """``(interval, cumulative)`` for each of :data:`SUPPORTED_QUANTILES` (nan when empty)."""
        if self._quantiles is None:  # they change only at flush: computed once per interval
            cum = self._flushed_cumulative().quantiles(SUPPORTED_QUANTILES)
            self._quantiles = list(zip(self._interval.quantiles(SUPPORTED_QUANTILES), cum,
                                       strict=True))
        return self._quantiles

    def cumulative_buckets(self) -> list[int]:
        """Cumulative counts for each of :data:`DEFAULT_BUCKETS` (``le``; bin-approximate as
        Envoy's ``computed_buckets``)."""
        if self._buckets is None:  # changes only at flush
            self._buckets = self._flushed_cumulative().counts_below(DEFAULT_BUCKETS)
        return self._buckets

    def __repr__(self) -> str:
        return f"Histogram({self.name!r}, count={self.count}, pending={self._pending.count})"


class _NullCounter(Counter):
    def inc(self, amount: int = 1) -> None:
        pass


class _NullGauge(Gauge):
    def set(self, value: int) -> None:
        pass

    def inc(self, amount: int = 1) -> None:
        pass

    def dec(self, amount: int = 1) -> None:
        pass


class _NullHistogram(Histogram):
    def record(self, value: float) -> None:
        pass


NULL_COUNTER = _NullCounter("<rejected>")
NULL_GAUGE = _NullGauge("<rejected>")
NULL_HISTOGRAM = _NullHistogram("<rejected>")

Stat = Counter | Gauge | Histogram


def tagged_name(base: str, tags: Sequence[tuple[str, str]]) -> str:
    """Raw ``/stats`` name of a natively tagged stat: ``base.k1.v1.k2.v2…``."""
    return ".".join([base, *(f"{k}.{v}" for k, v in tags)])


class StatsStore:
    """All stats of one sidecar: a name → stat map filtered by :class:`StatsMatcher`.

    Args:
        matcher: decides which stat names exist (Istio defaults when None).
        delimited_tags: stat names use Istio's ``;.`` tag delimiter (Prometheus naming).
    """

    def __init__(self, matcher: StatsMatcher | None = None, *, delimited_tags: bool = True) -> None:
        self.matcher = matcher or StatsMatcher()
        self.delimited_tags = delimited_tags
        self._stats: dict[str, Stat] = {}
        self._histograms: list[Histogram] = []
        self._rejected: set[str] = set()
        #: per-renderer memo of what a stat's name alone decides (e.g. Prometheus identity)
        self.render_cache: dict[str, dict[str, object]] = {}

    def _get(self, name: str, cls: type, null: Stat, tags: Tags | None) -> Stat:
        stat = self._stats.get(name)
        if stat is not None:
            return stat
        if name in self._rejected:
            return null
        if not self.matcher.accepts(name):
            self._rejected.add(name)
            return null
        stat = cls(name, tags)
        self._stats[name] = stat
        if cls is Histogram:
            self._histograms.append(stat)  # type: ignore[arg-type]
        return stat

    def counter(self, name: str, tags: Tags | None = None) -> Counter:
        """The counter ``name`` (created on first use; a null counter if rejected).

        Args:
            name: full raw name, e.g. ``cluster.outbound|80||a.b.svc.cluster.local;.upstream_rq_total``.
            tags: explicit tags for natively tagged stats (``name`` must then already be
                :func:`tagged_name`); None to use regex tag extraction.
        """
        return self._get(name, Counter, NULL_COUNTER, tags)  # type: ignore[return-value]

    def gauge(self, name: str, tags: Tags | None = None) -> Gauge:
        """The gauge ``name`` (see :meth:`counter`)."""
        return self._get(name, Gauge, NULL_GAUGE, tags)  # type: ignore[return-value]

    def histogram(self, name: str, tags: Tags | None = None) -> Histogram:
        """The histogram ``name`` (see :meth:`counter`)."""
        return self._get(name, Histogram, NULL_HISTOGRAM, tags)  # type: ignore[return-value]

    def items(self) -> list[tuple[str, Stat]]:
        """Every existing stat as ``(raw name, stat)``, in creation order."""
        return list(self._stats.items())

    def histograms(self) -> list[Histogram]:
        """Every existing histogram."""
        return list(self._histograms)

    def get(self, name: str) -> Stat | None:
        """An existing stat by raw name, or None."""
        return self._stats.get(name)

    def value(self, name: str) -> int | None:
        """Current value of an existing counter/gauge, or None."""
        stat = self._stats.get(name)
        return None if stat is None or isinstance(stat, Histogram) else stat.value

    def flush(self) -> None:
        """End the histogram interval (call every ``stats_flush_interval_s``)."""
        for hist in self._histograms:
            hist.flush()

    def reset_counters(self) -> None:
        """Admin ``POST /reset_counters``: zero every counter."""
        for stat in self._stats.values():
            if isinstance(stat, Counter):
                stat.value = 0

    def select(self, filter_regex: str | None = None, used_only: bool = False) -> list[Stat]:
        """Existing stats whose name matches ``filter_regex`` (search), only used ones if asked."""
        rx = re.compile(filter_regex) if filter_regex else None
        out = []
        for name, stat in self._stats.items():
            if used_only and not stat.used:
                continue
            if rx is not None and not rx.search(name):
                continue
            out.append(stat)
        return out

    def __len__(self) -> int:
        return len(self._stats)

    def __repr__(self) -> str:
        return f"StatsStore(stats={len(self._stats)}, rejected={len(self._rejected)})"
