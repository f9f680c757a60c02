"""Hot spots from a py-spy ``--format raw`` profile (collapsed stacks) of the sidecar.

Each raw line is ``frame;frame;…;leaf <count>`` with frames ``function (path:line)``; py-spy
skips idle samples by default, so ``count / rate_hz`` approximates CPU seconds.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

RATE_HZ = 250  # must match sidecar.py's ``py-spy record --rate``
_LINE_NO = re.compile(r":\d+\)$")


def _function(frame: str) -> str:
    """``handle (meshlab/proxy/http/conn.py:120)`` → ``handle (meshlab/proxy/http/conn.py)``."""
    frame = _LINE_NO.sub(")", frame.strip())
    return re.sub(r"\(/.*?/(meshlab|asyncio|h11|site-packages|python3\.\d+)/",
                  r"(\1/", frame)


def top_frames(raw: Path, requests: int, n: int = 15) -> dict:
    """The ``n`` functions with most self and inclusive samples, and µs of CPU per request.

    Args:
        raw: py-spy raw output file.
        requests: requests served during the sampled window (to scale to per-request cost).

    Returns:
        ``{"samples", "cpu_us_per_request", "top_self": [...], "top_inclusive": [...]}``, each
        entry ``{"frame", "self_pct" | "incl_pct", "us_per_request"}``.
    """
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += k
        self_c[frames[-1]] += k
        for f in set(frames):
            incl_c[f] += k

    def us(k: int) -> float:
        return round(k / RATE_HZ * 1e6 / max(1, requests), 1)

    return {"samples": total, "cpu_us_per_request": us(total),
            "top_self": [{"frame": f, "self_pct": round(100 * k / max(1, total), 1),
                          "us_per_request": us(k)} for f, k in self_c.most_common(n)],
            "top_inclusive": [{"frame": f, "incl_pct": round(100 * k / max(1, total), 1),
                               "us_per_request": us(k)} for f, k in incl_c.most_common(n)]}
