"""Inline SVG line charts for the HTML report: pure functions from series to an SVG string.

No JavaScript and no external resources: the SVG is embedded in ``report.html`` as is. Every
text that may come from the journal (series names, fault-window names, titles) is XML-escaped
here, so callers may mark the result safe for the template.

Charts are robust to awkward data: an empty chart says "no data", a single point is drawn as a
dot, all-zero values get a 0..1 axis, and ``None`` values break the line (a second without
requests has no latency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

#: Colours of series, in order, for charts that do not choose their own.
PALETTE = ("#1f6fd1", "#e8890c", "#c81e3a", "#2f9e44", "#7048e8", "#495057")
#: Fill of a shaded fault window (opaque, so it is drawn under the grid and the lines).
FAULT_FILL = "#fbd3d3"
#: Outline and label colour of a shaded fault window.
FAULT_EDGE = "#b42318"
#: Band along the x axis where a collector had a gap (no data).
GAP_FILL = "#8a94a3"
_GRID = "#e3e6ea"
_AXIS = "#5f6b7a"
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"


@dataclass(frozen=True)
class Series:
    """One line of a chart.

    Attributes:
        name: legend text.
        points: ``(x, y)`` pairs in data units; ``y`` None leaves a gap.
        color: CSS colour of the line.
        dashed: draw the line dashed.
    """

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str = PALETTE[0]
    dashed: bool = False


@dataclass(frozen=True)
class Window:
    """A shaded x-range, e.g. the time a fault was active.

    Attributes:
        label: text shown at the top of the window.
        start: first x, in data units.
        end: last x, in data units; None means "until the end of the chart" (still open).
    """

    label: str
    start: float
    end: float | None = None


def nice_ticks(low: float, high: float, max_ticks: int = 6) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 × 10^n).

    Args:
        low: the smallest value to cover.
        high: the largest value to cover; ``high <= low`` yields ``[low]``.
        max_ticks: the most ticks wanted (at least 2).

    Returns:
        Ascending tick values, the first <= ``low`` and the last >= ``high``.
    """
    if not high > low:
        return [low]
    raw_step = (high - low) / max(1, max_ticks - 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    count = math.ceil((high - first) / step - 1e-9)
    return [round(first + i * step, 10) for i in range(count + 1)]


def format_tick(value: float) -> str:
    """Short tick label: ``2.0 -> "2"``, ``0.25 -> "0.25"``, ``1500 -> "1500"``."""
    if value == int(value):
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _y_range(series: Sequence[Series]) -> tuple[float, float]:
    values = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    high = max(values, default=0.0)
    low = min(0.0, min(values, default=0.0))
    return (low, high) if high > low else (low, low + 1.0)


def _x_range(series: Sequence[Series], windows: Sequence[Window]) -> tuple[float, float]:
    xs = [x for s in series for x, _ in s.points if math.isfinite(x)]
    if not xs:
        xs = [w.start for w in windows] + [w.end for w in windows if w.end is not None]
    if not xs:
        return 0.0, 1.0
    low, high = min(xs), max(xs)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _segments(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Split points at None/non-finite y values into drawable runs."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in sorted(points, key=lambda p: p[0]):
        if y is None or not math.isfinite(y) or not math.isfinite(x):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               windows: Sequence[Window] = (), x_range: tuple[float, float] | None = None,
               gaps: Sequence[tuple[float, float]] = (), width: int = 1120,
               height: int = 300) -> str:
    """Render a line chart as a standalone ``<svg>`` element.

    Args:
        series: the lines to draw, in legend order.
        title: chart title (top left).
        x_label: x-axis label with its unit, e.g. ``"time since load start (s)"``.
        y_label: y-axis label with its unit, e.g. ``"latency (ms)"``.
        windows: x-ranges to shade (fault windows); clipped to the plot, drawn under the lines.
        x_range: ``(low, high)`` of the x axis; default: the extent of the points.
        gaps: x-ranges where a collector could not read (drawn as a grey band along the x axis,
            legend "no data").
        width: SVG width in px.
        height: SVG height in px without the legend; a legend too wide for the title row
            flows into rows under the chart, 18 px each.

    Returns:
        An inline ``<svg>`` element (no ``xmlns``: meant for embedding in HTML); all text in
        it is escaped, so it is safe to embed unescaped.
    """
    left, right, top, bottom = 64, 16, 44, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    x_low, x_high = x_range if x_range and x_range[1] > x_range[0] else _x_range(series, windows)
    y_ticks = nice_ticks(*_y_range(series), max_ticks=6)
    y_low, y_high = y_ticks[0], y_ticks[-1] if len(y_ticks) > 1 else y_ticks[0] + 1.0

    def sx(x: float) -> float:
        return left + (min(max(x, x_low), x_high) - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y_low) / (y_high - y_low) * plot_h

    gaps = [g for g in gaps if _window_visible(Window("", g[0], g[1]), x_low, x_high)]
    items = _legend_items(series, any(_window_visible(w, x_low, x_high) for w in windows),
                          bool(gaps))
    on_title_row = left + 8.2 * len(title) + 24 + sum(w for *_, w in items) <= width - right
    rows = [] if on_title_row else _legend_rows(items, width - left - right)
    total_h = height + 18 * len(rows) + (6 if rows else 0)
    out = [(f'<svg class="chart" width="{width}" '
           f'height="{total_h}" viewBox="0 0 {width} {total_h}" role="img" '
           f'aria-label="{escape(title)}" style="{_FONT}">'),
           f"<title>{escape(title)}</title>",
           f'<rect x="0" y="0" width="{width}" height="{total_h}" fill="#ffffff"/>',
           (f'<text x="{left}" y="18" font-size="14" font-weight="600" fill="#1d2733">'
           f"{escape(title)}</text>")]
    for window in windows:
        end = x_high if window.end is None else window.end
        if not _window_visible(window, x_low, x_high):
            continue
        x0, x1 = sx(window.start), sx(end)
        out.append(f'<g class="fault-window"><title>fault {escape(window.label)}: '
                   f"{format_tick(window.start)} s to "
                   f"{'end' if window.end is None else format_tick(window.end) + ' s'}</title>"
                   f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.0):.1f}" '
                   f'height="{plot_h}" fill="{FAULT_FILL}" stroke="{FAULT_EDGE}" '
                   f'stroke-width="0.75" stroke-dasharray="4 3"/>'
                   f'<text x="{x0 + 4:.1f}" y="{top + 13}" font-size="11" fill="{FAULT_EDGE}">'
                   f"{escape(window.label)}</text></g>")
    for g_start, g_end in gaps:
        x0, x1 = sx(g_start), sx(g_end)
        out.append(f'<g class="gap"><title>no data {format_tick(round(g_start, 1))} s to '
                   f'{format_tick(round(g_end, 1))} s</title><rect x="{x0:.1f}" '
                   f'y="{top + plot_h - 7}" width="{max(x1 - x0, 2.0):.1f}" height="7" '
                   f'fill="{GAP_FILL}"/></g>')
    for tick in y_ticks:
        y = sy(tick)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{_GRID}" stroke-width="1"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                   f'fill="{_AXIS}">{format_tick(tick)}</text>')
    for tick in nice_ticks(x_low, x_high, max_ticks=10):
        if x_low - 1e-9 <= tick <= x_high + 1e-9:
            x = sx(tick)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" '
                       f'y2="{top + plot_h + 4}" stroke="{_AXIS}"/>'
                       f'<text x="{x:.1f}" y="{top + plot_h + 17}" font-size="11" '
                       f'text-anchor="middle" fill="{_AXIS}">{format_tick(tick)}</text>')
    out.append(f'<polyline points="{left},{top} {left},{top + plot_h} {left + plot_w},'
               f'{top + plot_h}" fill="none" stroke="{_AXIS}" stroke-width="1"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" font-size="12" '
               f'text-anchor="middle" fill="{_AXIS}">{escape(x_label)}</text>'
               f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
               f'font-size="12" text-anchor="middle" fill="{_AXIS}">{escape(y_label)}</text>')
    drawn = 0
    for line in series:
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        colour = escape(line.color)
        for run in _segments(line.points):
            drawn += len(run)
            if len(run) == 1:
                x, y = run[0]
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
            else:
                coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                           f'stroke-width="2" stroke-linejoin="round"{dash}/>')
    if not drawn:
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                   f'font-size="13" text-anchor="middle" fill="{_AXIS}">no data</text>')
    if on_title_row:
        out.append(_legend([items], right_x=width - right, top_y=9))
    else:
        out.append(_legend(rows, left_x=left, top_y=height + 2))
    out.append("</svg>")
    return "".join(out)


def _window_visible(window: Window, x_low: float, x_high: float) -> bool:
    end = x_high if window.end is None else window.end
    return not (end < x_low or window.start > x_high)


#: A legend item: ``(name, colour, kind, dashed, width in px)``.
_Item = tuple[str, str, str, bool, float]


def _legend_items(series: Sequence[Series], shaded: bool, gaps: bool) -> list[_Item]:
    items: list[_Item] = [(s.name, escape(s.color), "line", s.dashed, 7.0 * len(s.name) + 30)
                          for s in series]
    if shaded:
        items.append(("fault window", FAULT_FILL, "box", False, 7.0 * 12 + 30))
    if gaps:
        items.append(("no data", GAP_FILL, "gap", False, 7.0 * 7 + 30))
    return items


def _legend_rows(items: list[_Item], max_width: float) -> list[list[_Item]]:
    """Flow legend items into rows no wider than ``max_width``."""
    rows: list[list[_Item]] = [[]]
    used = 0.0
    for item in items:
        if rows[-1] and used + item[4] > max_width:
            rows.append([])
            used = 0.0
        rows[-1].append(item)
        used += item[4]
    return [row for row in rows if row]


def _legend(rows: list[list[_Item]], *, top_y: float, right_x: float | None = None,
            left_x: float = 0.0) -> str:
    """Legend rows: right-aligned at ``right_x`` (one row on the title line) or left-aligned
    from ``left_x`` (rows under the chart); the fault box appears only when a window is drawn."""
    parts = []
    for index, row in enumerate(rows):
        y = top_y + 18 * index
        x = right_x - sum(item[4] for item in row) if right_x is not None else left_x
        for name, colour, kind, dashed, item_w in row:
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            edge = f' stroke="{FAULT_EDGE}" stroke-width="0.75"' if kind == "box" else ""
            swatch = (f'<rect x="{x:.1f}" y="{y:.0f}" width="18" height="10" fill="{colour}"'
                      f'{edge}/>' if kind in ("box", "gap") else
                      f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y + 5:.0f}" y2="{y + 5:.0f}" '
                      f'stroke="{colour}" stroke-width="3"{dash}/>')
            parts.append(f'{swatch}<text x="{x + 22:.1f}" y="{y + 9:.0f}" font-size="12" '
                         f'fill="#1d2733">{escape(name)}</text>')
            x += item_w
    return f'<g class="legend">{"".join(parts)}</g>'
