"""charts: pure SVG builders, robust to empty, single-point, zero and gappy series."""

from __future__ import annotations

import re

import pytest

from meshlab.report.charts import FAULT_FILL, Series, Window, line_chart, nice_ticks


def chart(series, **kwargs):
    return line_chart(series, title="t", x_label="time (s)", y_label="latency (ms)", **kwargs)


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0, 89.28, [0, 20, 40, 60, 80, 100]),
    (0, 207, [0, 50, 100, 150, 200, 250]),
    (5, 5, [5]),
])
def test_nice_ticks_cover_the_range_with_round_steps(low, high, expected):
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_chart_has_axes_labels_legend_and_lines():
    svg = chart([Series("p50", [(0, 1.0), (1, 2.0), (2, 1.5)], "#123456"),
                 Series("p99", [(0, 5.0), (1, 9.0), (2, 7.0)], "#654321", dashed=True)])

    assert svg.startswith('<svg class="chart"') and svg.endswith("</svg>")
    assert "time (s)" in svg and "latency (ms)" in svg
    assert svg.count("<polyline") == 3  # two series + the axes
    assert 'stroke="#123456"' in svg and 'stroke-dasharray="6 4"' in svg
    assert ">p50</text>" in svg and ">p99</text>" in svg
    assert ">10</text>" in svg  # y axis reaches a round tick above the max (9)


def test_empty_chart_says_no_data():
    svg = chart([Series("p50", [])])
    assert "no data" in svg and "<circle" not in svg


def test_single_point_is_drawn_as_a_dot():
    svg = chart([Series("rps", [(3, 200.0)])])
    assert svg.count("<circle") == 1 and "no data" not in svg


def test_all_zero_series_gets_a_unit_axis():
    svg = chart([Series("errors/s", [(0, 0.0), (1, 0.0)])])
    assert ">1</text>" in svg and ">0</text>" in svg and "nan" not in svg.lower()


def test_none_values_break_the_line():
    svg = chart([Series("p50", [(0, 1.0), (1, 1.0), (2, None), (3, 1.0), (4, 1.0)])])
    assert svg.count("<polyline") == 3  # two runs + axes


def test_windows_are_shaded_clipped_and_escaped():
    svg = chart([Series("rps", [(0, 1.0), (10, 1.0)])],
                windows=[Window("<drop & delay>", 2, 4), Window("open", 8, None),
                         Window("outside", 20, 30)],
                x_range=(0, 10))

    assert svg.count(f'fill="{FAULT_FILL}"') == 3  # two windows + legend swatch
    assert "&lt;drop &amp; delay&gt;" in svg and "<drop" not in svg
    assert "outside" not in svg
    assert "fault window" in svg
    widths = [float(w) for w in re.findall(r'class="fault-window">.*?width="([\d.]+)"', svg)]
    assert len(widths) == 2 and widths[0] == pytest.approx(widths[1])


def test_legend_omits_fault_box_when_no_window_is_drawn():
    svg = chart([Series("rps", [(0, 1.0), (10, 1.0)])], windows=[Window("later", 50, 60)])
    assert "fault window" not in svg
