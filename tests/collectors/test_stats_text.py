"""The one /stats text parser (meshlab.collectors.stats_text) and the ways its callers read a
line: the collectors' dict, the chaostoolkit probe's and the half-close suite's first-": "
split, the experiment's settle wait (any ":", whitespace around unsigned digits)."""

import re

from meshlab.collectors.stats_text import (
    int_value,
    parse_stats,
    parse_stats_text,
    stat_ints,
    stat_lines,
    stats_path,
)

LINES = (
    "cluster.a;.upstream_cx_active: 3",
    "server.gauge_neg: -2",
    "[::1]:80: x.tcp_stats.bytes: 7",
    ("cluster.a;.upstream_cx_length_ms: P0(nan,1) P25(nan,2) P50(1,2) P75(nan,3) P90(nan,4) "
     "P95(nan,5) P99(nan,6) P99.5(nan,7) P99.9(nan,8) P100(9,10)"),
    "cluster.a;.upstream_rq_time: No recorded values",
    'server.version_text: "1.2"',
    "",
    "garbage",
    ": 4",
    "padded: 5 ",
)
PAGE = "\n".join(LINES)


def test_stat_lines_split_at_the_last_or_the_first_separator() -> None:
    lines = list(stat_lines(PAGE))
    assert lines[2] == ("[::1]:80: x.tcp_stats.bytes", "7")
    assert list(stat_lines(PAGE, first=True))[2] == ("[::1]:80", "x.tcp_stats.bytes: 7")
    assert ("", "") in lines and ("garbage", "") in lines and ("", "4") in lines


def test_int_value_options() -> None:
    assert int_value("-2") == -2 and int_value("-2", signed=False) is None
    assert int_value(" 5 ") is None and int_value(" 5 ", strip=True) == 5
    assert int_value("No recorded values") is None and int_value("") is None
    assert int_value("P0(nan,1) P100(9,10)") is None and int_value('"1.2"') is None


def test_the_collectors_dict_skips_histograms_blank_garbage_and_nameless_lines() -> None:
    assert parse_stats(PAGE) == {"cluster.a;.upstream_cx_active": 3, "server.gauge_neg": -2,
                                 "[::1]:80: x.tcp_stats.bytes": 7}
    scalars, hists = parse_stats_text(PAGE)
    assert scalars == parse_stats(PAGE)
    assert hists["cluster.a;.upstream_cx_length_ms"] == {"p50": 1, "p90": None, "p99": None,
                                                          "p999": None, "max": 9}
    assert set(hists["cluster.a;.upstream_rq_time"].values()) == {None}


def test_stat_ints_keeps_page_order_and_repeats() -> None:
    page = "a: 1\nb: x\na: 2\n"
    assert list(stat_ints(page)) == [("a", 1), ("a", 2)]
    assert parse_stats(page) == {"a": 2}


def test_the_settle_waits_reading_sums_every_unsigned_number_after_a_colon() -> None:
    page = "x.rq_active: 2\ny.rq_active:3 \nz.rq_active: -1\nw: P0(1,1)\n: 4\r\nv:\x1c5\n"
    total = sum(v for _, v in stat_ints(page, ":", newline="\n", strip=True, signed=False))
    assert total == 2 + 3 + 4 + 5
    # the regex it replaced (the experiment's settle wait), line by line
    assert total == sum(int(v) for v in re.findall(r":\s*(\d+)\s*$", page, re.MULTILINE))


def test_stats_path_url_encodes_the_filter() -> None:
    assert stats_path() == stats_path("") == "/stats"
    assert stats_path("tcp_stats") == "/stats?filter=tcp_stats"
    assert stats_path("rq_active$") == "/stats?filter=rq_active%24"
