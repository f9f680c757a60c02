"""meshlab.load.hdr: µs histograms, encoding round trip and exact merging."""

from __future__ import annotations

import random

import pytest

from meshlab.errors import LabError
from meshlab.load import hdr


def _samples_us(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.lognormvariate(7.0, 1.0)) + 1 for _ in range(n)]


def _histogram(values: list[int]):
    histogram = hdr.new_histogram()
    for value in values:
        hdr.record_us(histogram, value)
    return histogram


def test_encode_decode_round_trip() -> None:
    original = _histogram(_samples_us(5000, seed=1))
    text = hdr.encode(original)
    assert isinstance(text, str) and text.startswith("HISTF")
    decoded = hdr.decode(text)
    assert decoded.equals(original)
    assert hdr.percentiles(decoded) == hdr.percentiles(original)


def test_merge_equals_one_histogram_of_all_samples() -> None:
    parts = [_samples_us(n, seed) for n, seed in ((1000, 2), (10, 3), (2500, 4))]
    everything = _histogram([v for part in parts for v in part])
    encoded = [hdr.encode(_histogram(part)) for part in parts]
    empty = hdr.encode(hdr.new_histogram())
    merged = hdr.merge([empty, *encoded, empty])
    assert merged.get_total_count() == 3510
    assert merged.equals(everything)
    assert hdr.percentiles(merged) == hdr.percentiles(everything)
    assert hdr.percentiles(merged)["min"] == min(v for part in parts for v in part)


def test_merge_of_nothing_is_empty() -> None:
    assert hdr.merge([]).get_total_count() == 0


def test_percentiles_keep_microseconds() -> None:
    # below 2048 µs every microsecond is its own bucket; above, within 0.1 %
    summary = hdr.percentiles(_histogram([1501, 1517, 1533, 1549, 9999]))
    assert summary["min"] == 1501
    assert summary["p50"] == 1533
    assert summary["max"] in (9999, 10000, 10001, 10003)  # within 0.1 %
    assert list(summary) == ["min", "mean", "p50", "p90", "p99", "p999", "max"]


def test_percentiles_of_empty_histogram_are_none() -> None:
    assert set(hdr.percentiles(hdr.new_histogram()).values()) == {None}


def test_out_of_range_values_are_clamped() -> None:
    assert hdr.clamp_us(0) == hdr.LOWEST_US
    assert hdr.clamp_us(0.4) == 1
    assert hdr.clamp_us(2500.6) == 2501
    assert hdr.clamp_us(1e12) == hdr.HIGHEST_US
    histogram = hdr.new_histogram()
    hdr.record_us(histogram, 1e12)
    assert histogram.get_total_count() == 1


@pytest.mark.parametrize("garbage", ["", "not base64 at all", "SElTVEZBQUFBQUFB"])
def test_decode_garbage_raises_lab_error(garbage: str) -> None:
    with pytest.raises(LabError, match="HdrHistogram"):
        hdr.decode(garbage)


@pytest.mark.parametrize("seed", range(6))
def test_percentiles_equal_hdrh_own_walk(seed: int) -> None:
    """The fast bisect/mean of :func:`hdr.percentiles` give exactly hdrh's values."""
    rng = random.Random(seed)
    histogram = hdr.new_histogram()
    for _ in range(rng.choice([1, 7, 5000])):
        hdr.record_us(histogram, rng.choice([rng.randint(1, hdr.HIGHEST_US),
                                             rng.lognormvariate(6, 1.5), 1]))
    got = hdr.percentiles(histogram)
    want = histogram.get_percentile_to_value_dict(list(hdr.PERCENTILE_KEYS.values()))
    assert [got[key] for key in hdr.PERCENTILE_KEYS] == [
        want[pct] for pct in hdr.PERCENTILE_KEYS.values()]
    assert got["mean"] == round(histogram.get_mean_value(), 1)


@pytest.mark.parametrize("seed", range(4))
def test_quantiles_equal_percentiles_for_their_keys(seed: int) -> None:
    """:func:`hdr.quantiles` (the series points' p50/p90/p99/max, no mean) are exactly the
    values :func:`hdr.percentiles` gives for those keys, and None for an empty histogram."""
    keys = ("p50", "p90", "p99", "max")
    histogram = _histogram(_samples_us(1 + 997 * seed, seed))
    full = hdr.percentiles(histogram)
    assert hdr.quantiles(histogram, keys) == {key: full[key] for key in keys}
    assert hdr.quantiles(histogram, ["p999"]) == {"p999": full["p999"]}
    assert hdr.quantiles(hdr.new_histogram(), keys) == dict.fromkeys(keys)
