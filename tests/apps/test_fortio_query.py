"""fortio's query knobs as pure decisions (cases mirror fortio's fhttp/http_test.go)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshlab.apps.fortio_query import (
    EchoLimits,
    decide_echo,
    extra_headers,
    parse_go_duration_s,
    parse_query,
    parse_weighted,
    pick_delay_s,
    pick_probability,
    pick_size,
    pick_status,
)

DRAWS = 2000


@pytest.mark.parametrize(("text", "expected"), [
    ("x", 400), ("1::", 400), ("x:10", 400), ("555:x", 400), ("555:-1", 400), ("555:101", 400),
    ("551:45,551:56", 400),
    ("", 200), ("555", 555), ("555:100", 555), ("555:100%", 555), ("555:0", 200),
    ("551:45,551:55", 551), ("551:45%,551:55%", 551), ("503:99.0,503:1.00001", 503),
])
def test_status_matches_fortio_table(text: str, expected: int) -> None:
    assert pick_status(text, random.Random(1)) == expected


def test_status_sum_above_100_after_rounding_is_invalid() -> None:
    assert pick_status("503:99.0,503:1.00001,500:0.0001", random.Random(1)) == 400


@pytest.mark.parametrize(("text", "expected_s"), [
    ("", 0.0), ("x", 0.0), ("1::", 0.0), ("x:10", 0.0), ("10ms:-1", 0.0), ("20ms:101%", 0.0),
    ("10ms:45,100ms:56", 0.0), ("10s:45,10s:55", 1.5), ("100ms", 0.1), ("100ms:100%", 0.1),
    ("100ms:0", 0.0), ("10ms:45,10ms:55", 0.01), ("5s", 1.5), ("-1s", 0.0), ("250ms", 0.25),
])
def test_delay_matches_fortio_table(text: str, expected_s: float) -> None:
    assert pick_delay_s(text, random.Random(1), max_delay_s=1.5) == pytest.approx(expected_s)


@pytest.mark.parametrize(("text", "expected"), [
    ("x", None), ("1::", None), ("x:10", None), ("555:x", None), ("555:-1", None),
    ("555:101", None), ("551:45,551:56", None), ("", None), ("512", 512), ("512:100", 512),
    ("512:0", None), ("512:45,512:55", 512), ("0", 0), ("-5", 0), ("262144", 262144),
    ("262145", 262144), ("1000000:10,2000000:90", 262144),
])
def test_size_matches_fortio_table(text: str, expected: int | None) -> None:
    assert pick_size(text, random.Random(1), max_payload_bytes=262144) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("", False), ("false", False), ("true", True), ("x", True), ("0", False), ("0.0", False),
    ("100", True),
])
def test_single_probability_matches_fortio_table(text: str, expected: bool) -> None:
    assert pick_probability(text, random.Random(1)) is expected


@pytest.mark.parametrize(("text", "expected_s"), [
    ("0", 0.0), ("250ms", 0.25), ("1.5s", 1.5), ("1h2m", 3720.0), ("-3us", -3e-6),
    ("1m30.5s", 90.5), (".5s", 0.5), ("100µs", 1e-4), ("7ns", 7e-9),
])
def test_go_duration(text: str, expected_s: float) -> None:
    assert parse_go_duration_s(text) == pytest.approx(expected_s)


@pytest.mark.parametrize("text", ["", "5", "1x", ".s", "1s ", "s", "+", "1.2.3s"])
def test_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration_s(text)


def test_weighted_table_is_cumulative() -> None:
    assert parse_weighted("503:10,429:5%", int) == [(503, 10.0), (429, 15.0)]


def test_same_seed_gives_same_decisions() -> None:
    query = parse_query("status=503:10,429:5&delay=10ms:50,1s:5&size=10:30&close=20")
    limits = EchoLimits()
    first = [decide_echo(query, random.Random(7), limits) for _ in range(3)]
    rng_a, rng_b = random.Random(42), random.Random(42)
    run_a = [decide_echo(query, rng_a, limits) for _ in range(200)]
    run_b = [decide_echo(query, rng_b, limits) for _ in range(200)]
    assert run_a == run_b
    assert first[0] == first[1] == first[2]
    assert len({(d.status, d.delay_s, d.size, d.close) for d in run_a}) > 4


def _binomial_bounds(pct: float, draws: int = DRAWS) -> tuple[float, float]:
    mean = draws * pct / 100
    sd = (draws * pct / 100 * (1 - pct / 100)) ** 0.5
    return mean - 5 * sd, mean + 5 * sd


def test_weighted_status_distribution() -> None:
    rng = random.Random(2024)
    counts = Counter(pick_status("503:10,429:5", rng) for _ in range(DRAWS))
    assert set(counts) == {200, 429, 503}
    for status, pct in ((503, 10), (429, 5), (200, 85)):
        low, high = _binomial_bounds(pct)
        assert low <= counts[status] <= high, (status, counts)


def test_weighted_delay_distribution_and_cap() -> None:
    rng = random.Random(99)
    counts = Counter(pick_delay_s("10ms:50,1s:5", rng, max_delay_s=0.5) for _ in range(DRAWS))
    assert set(counts) == {0.01, 0.5, 0.0}  # 1s is capped at max_delay_s
    for value, pct in ((0.01, 50), (0.5, 5), (0.0, 45)):
        low, high = _binomial_bounds(pct)
        assert low <= counts[value] <= high, (value, counts)


def test_close_percentage_distribution() -> None:
    rng = random.Random(5)
    closes = sum(pick_probability("10", rng) for _ in range(DRAWS))
    low, high = _binomial_bounds(10)
    assert low <= closes <= high


def test_weighted_size_falls_back_to_echo() -> None:
    rng = random.Random(11)
    counts = Counter(pick_size("100:20,200:30", rng, 1000) for _ in range(DRAWS))
    assert set(counts) == {100, 200, None}
    low, high = _binomial_bounds(50)
    assert low <= counts[None] <= high


def test_parse_query_like_go() -> None:
    query = parse_query("header=X-A:1&header=X-B:two+words&delay=1s&a;b=c&status=503%3A10")
    assert query["header"] == ["X-A:1", "X-B:two words"]
    assert query["status"] == ["503:10"]
    assert "a;b" not in query and "b" not in query


def test_extra_headers_skip_entries_without_colon() -> None:
    assert extra_headers(["X-A:1", "bogus", "", "X-B: v:w"]) == [("X-A", "1"), ("X-B", " v:w")]


def test_gzip_only_when_accepted() -> None:
    query = parse_query("gzip=true")
    assert not decide_echo(query, random.Random(1), EchoLimits(), accepts_gzip=False).gzip
    assert decide_echo(query, random.Random(1), EchoLimits(), accepts_gzip=True).gzip
