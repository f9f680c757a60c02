"""Admin renderers of a :class:`~meshlab.proxy.stats.store.StatsStore` (sans-IO; ENVOY.md §3, §4).

- ``/stats`` text and JSON list raw names; histograms show :data:`SUPPORTED_QUANTILES` as
  ``(interval, cumulative)`` pairs of the last flush.
- Prometheus names come from Istio's ``stats_tags`` regexes; stats with explicit tags (the
  ``istiocustom`` namespace) lose the namespace and get no ``envoy_`` prefix.
"""

from __future__ import annotations

import json
import math
import re

from meshlab.proxy.stats.store import (
    DEFAULT_BUCKETS,
    SUPPORTED_QUANTILES,
    Histogram,
    Stat,
    StatsStore,
    Tags,
)

#: Custom stat namespaces whose prefix Prometheus output drops (Istio registers ``istiocustom``).
CUSTOM_NAMESPACES = ("istiocustom",)

_HEX_ADDR = r"[_\[\]aAbBcCdDeEfF\d:]"
#: Istio ``stats_tags`` (``use_all_default_tags: false``), Python-regex spelling. Each entry:
#: (tag name, regex, is-suffix-extractor). Group 1 is removed from the name, group 2 is the value.
_TAGS_DELIMITED: tuple[tuple[str, str], ...] = (
    ("cluster_name", r"^cluster(\.(.+);)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.\d\w]*|" + _HEX_ADDR[:-1] + r"\w]*));\.)"),
    ("listener_address", r"^listener\.(((?:[_.\d]*|" + _HEX_ADDR + r"*))\.)"),
)
_TAGS_LEGACY: tuple[tuple[str, str], ...] = (
    ("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.\d]*|" + _HEX_ADDR + r"*))\.)"),
    ("listener_address", r"^listener\.(((?:[_.\d]*|" + _HEX_ADDR + r"*))\.)"),
)


def stats_tags(delimited: bool = True) -> list[tuple[str, str]]:
    """Istio's ``stats_config.stats_tags`` as ``(tag_name, regex)`` (for ``/config_dump``)."""
    return list(_TAGS_DELIMITED if delimited else _TAGS_LEGACY)


class TagExtractor:
    """Turns a raw stat name into (tag-extracted name, tags) like Envoy's ``TagProducerImpl``.

    Suffix extractors (no ``^`` anchor) run first, then the prefix ones, which fixes the label
    order, e.g. ``envoy_cluster_upstream_rq{response_code="200",cluster_name="…"}``.
    """

    def __init__(self, delimited: bool = True) -> None:
        specs = _TAGS_DELIMITED if delimited else _TAGS_LEGACY
        ordered = [s for s in specs if not s[1].startswith("^")] + \
                  [s for s in specs if s[1].startswith("^")]
        self._extractors = [(name, re.compile(rx)) for name, rx in ordered]
        self._cache: dict[str, tuple[str, Tags]] = {}

    def extract(self, name: str) -> tuple[str, Tags]:
        """Return ``(tag_extracted_name, tags)`` for ``name`` (cached)."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        tags: list[tuple[str, str]] = []
        rest = name
        for tag, rx in self._extractors:
            m = rx.search(rest)
            if m is None:
                continue
            value = m.group(2) if rx.groups >= 2 else m.group(1)
            rest = rest[:m.start(1)] + rest[m.end(1):]
            tags.append((tag, value))
        result = (rest, tuple(tags))
        self._cache[name] = result
        return result

    def __repr__(self) -> str:
        return f"TagExtractor(extractors={[n for n, _ in self._extractors]})"


_EXTRACTORS: dict[bool, TagExtractor] = {}


def _extractor(delimited: bool) -> TagExtractor:
    """The shared (caching) extractor for one tag layout."""
    ext = _EXTRACTORS.get(delimited)
    if ext is None:
        ext = _EXTRACTORS[delimited] = TagExtractor(delimited)
    return ext


#: Admin ``/stats?type=`` values → the stat kinds they list (Envoy
#: ``source/server/admin/stats_params.cc``; meshlab's sidecar has no text readouts).
STAT_TYPES: dict[str, tuple[str, ...]] = {
    "All": ("counter", "gauge", "histogram"), "Counters": ("counter",), "Gauges": ("gauge",),
    "Histograms": ("histogram",), "TextReadouts": (),
}


def _select(store: StatsStore, filter_regex: str | None, used_only: bool,
            stat_type: str) -> list[Stat]:
    kinds = STAT_TYPES[stat_type]
    return [s for s in store.select(filter_regex, used_only) if s.kind in kinds]


def render_text(store: StatsStore, filter_regex: str | None = None, used_only: bool = False,
                stat_type: str = "All") -> str:
    """``GET /stats``: sorted ``name: value`` lines, counters and gauges then histograms
    (only the kinds of ``stat_type``, a :data:`STAT_TYPES` key)."""
    stats = _select(store, filter_regex, used_only, stat_type)
    scalars = sorted((s for s in stats if not isinstance(s, Histogram)), key=lambda s: s.name)
    hists = sorted((s for s in stats if isinstance(s, Histogram)), key=lambda s: s.name)
    lines = [f"{s.name}: {s.value}" for s in scalars]
    for h in hists:
        if not h.count:
            lines.append(f"{h.name}: No recorded values")
            continue
        lines.append(_histogram_line(h))
    return "".join(line + "\n" for line in lines)


#: id(histogram) → (the quantile list it was rendered from, the ``/stats`` line). A histogram's
#: quantile list is the same object until its next flush, so a line is formatted once per flush.
_LINES: dict[int, tuple[object, str]] = {}


def _histogram_line(h: Histogram) -> str:
    quantiles = h.quantiles()
    cached = _LINES.get(id(h))
    if cached is not None and cached[0] is quantiles:
        return cached[1]
    parts = [f"P{_fmt(q * 100)}({fmt_double(i)},{fmt_double(c)})"
             for q, (i, c) in zip(SUPPORTED_QUANTILES, quantiles)]
    line = f"{h.name}: {' '.join(parts)}"
    _LINES[id(h)] = (quantiles, line)
    return line


def render_json(store: StatsStore, filter_regex: str | None = None, used_only: bool = False,
                stat_type: str = "All") -> str:
    """``GET /stats?format=json`` (only the kinds of ``stat_type``)."""
    stats = _select(store, filter_regex, used_only, stat_type)
    out: list[dict[str, object]] = [
        {"name": s.name, "value": s.value}
        for s in sorted(stats, key=lambda s: s.name) if not isinstance(s, Histogram)]
    computed = []
    for h in sorted((s for s in stats if isinstance(s, Histogram)), key=lambda s: s.name):
        values = [{"interval": None if math.isnan(i) else i,
                   "cumulative": None if math.isnan(c) else c} for i, c in h.quantiles()]
        computed.append({"name": h.name, "values": values})
    if computed:
        quantiles = [q * 100 for q in SUPPORTED_QUANTILES]
        out.append({"histograms": {"supported_quantiles": quantiles,
                                   "computed_quantiles": computed}})
    return json.dumps({"stats": out}, indent=1)


def prometheus_identity(store: StatsStore, stat: Stat) -> tuple[str, Tags]:
    """Prometheus metric name and labels of ``stat``."""
    if stat.tags is not None:
        base = stat.name.split(".", 2)
        ns = base[0]
        metric = base[1] if ns in CUSTOM_NAMESPACES else f"{ns}.{base[1]}"
        prefix = "" if ns in CUSTOM_NAMESPACES else "envoy_"
        return prefix + _sanitize(metric), stat.tags
    extracted, tags = _extractor(store.delimited_tags).extract(stat.name)
    return "envoy_" + _sanitize(extracted), tags


def render_prometheus(store: StatsStore, used_only: bool = False,
                      filter_regex: str | None = None) -> str:
    """``GET /stats/prometheus``: Prometheus text format 0.0.4.

    One ``# TYPE`` line per tag-extracted metric name, then its series sorted by labels;
    histograms as cumulative ``_bucket{…,le=…}`` lines over :data:`DEFAULT_BUCKETS` plus
    ``+Inf``, ``_sum`` and ``_count``. ``filter_regex`` is searched in the raw stat name.
    """
    groups: dict[str, tuple[str, list[tuple[Tags, str, Stat]]]] = {}
    identities = store.render_cache.setdefault("prometheus", {})
    for stat in store.select(filter_regex, used_only):
        ident = identities.get(stat.name)
        if ident is None:  # a stat's name and tags never change: extracted once
            metric, tags = prometheus_identity(store, stat)
            ident = identities[stat.name] = (metric, tags, _labels(tags))
        groups.setdefault(ident[0], (stat.kind, []))[1].append((ident[1], ident[2], stat))
    lines: list[str] = []
    for metric in sorted(groups):
        kind, members = groups[metric]
        lines.append(f"# TYPE {metric} {kind}")
        for tags, labels, stat in sorted(members, key=lambda m: m[0]):
            if isinstance(stat, Histogram):
                lines.append(_prometheus_histogram(metric, tags, stat))
            else:
                lines.append(f"{metric}{labels} {stat.value}")
        lines.append("")
    return "\n".join(lines)


#: id(histogram) → (its bucket list, metric, tags, the rendered lines): histogram series change
#: only at flush (the bucket list is a new object then), so they are formatted once per flush.
_PROM_LINES: dict[int, tuple[object, str, Tags, str]] = {}


def _prometheus_histogram(metric: str, tags: Tags, stat: Histogram) -> str:
    """The ``_bucket`` (over :data:`DEFAULT_BUCKETS` and ``+Inf``), ``_sum`` and ``_count``
    lines of one histogram series."""
    counts = stat.cumulative_buckets()
    cached = _PROM_LINES.get(id(stat))
    if cached is not None and cached[0] is counts and cached[1] == metric and cached[2] == tags:
        return cached[3]
    lines = [f"{metric}_bucket{_labels(tags, ('le', _fmt(le)))} {n}"
             for le, n in zip(DEFAULT_BUCKETS, counts)]
    lines.append(f"{metric}_bucket{_labels(tags, ('le', '+Inf'))} {stat.count}")
    lines.append(f"{metric}_sum{_labels(tags)} {_fmt(stat.sum)}")
    lines.append(f"{metric}_count{_labels(tags)} {stat.count}")
    text = "\n".join(lines)
    _PROM_LINES[id(stat)] = (counts, metric, tags, text)
    return text


_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def _sanitize(name: str) -> str:
    return _INVALID.sub("_", name)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(tags: Tags, extra: tuple[str, str] | None = None) -> str:
    items = list(tags) + ([extra] if extra else [])
    if not items:
        return ""
    return "{" + ",".join(f'{_sanitize(k)}="{_escape(v)}"' for k, v in items) + "}"


def fmt_double(value: float) -> str:
    """A double as Envoy's ``fmt::format("{}")`` prints it: shortest round-trip digits, in
    scientific form only when that is strictly shorter (``1e+05``, ``0.001``, ``nan``)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    digits, exp = _shortest(value)
    sign = "-" if value < 0 else ""
    point = exp + 1  # position of the decimal point after the first digit
    if point <= 0:
        fixed = "0." + "0" * -point + digits
    elif point >= len(digits):
        fixed = digits + "0" * (point - len(digits))
    else:
        fixed = digits[:point] + "." + digits[point:]
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sci = f"{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return sign + (sci if len(sci) < len(fixed) else fixed)


def _shortest(value: float) -> tuple[str, int]:
    """(significant digits, decimal exponent of the first digit) of ``repr(abs(value))``."""
    text = repr(abs(value))
    if "e" in text:
        m, _, ex = text.partition("e")
        digits = m.replace(".", "").rstrip("0") or "0"
        return digits, int(ex)
    whole, _, frac = text.partition(".")
    raw = (whole + frac).lstrip("0")
    if whole.strip("0"):
        exp = len(whole.lstrip("0")) - 1
    else:
        exp = -(len(frac) - len(frac.lstrip("0")) + 1)
    return raw.rstrip("0") or "0", exp


def _fmt(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.10g}"
