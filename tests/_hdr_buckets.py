"""Test helper: an encoded µs histogram as its bucket counts, to compare histograms exactly.

In ``tests/`` (on ``sys.path`` through its conftest), so every test folder imports it as
``from _hdr_buckets import buckets``.
"""

from __future__ import annotations

from meshlab.load import hdr


def buckets(encoded: str | None) -> list[int]:
    """Every bucket count of an encoded histogram (the whole counts array); ``[]`` for None."""
    if encoded is None:
        return []
    histogram = hdr.decode(encoded)
    return [histogram.get_count_at_index(i) for i in range(histogram.counts_len)]
