"""The proxy's counters: calls forwarded, refused by reason, failed upstream; its added latency; refusal logs.

Added latency is kept in a histogram of fixed, logarithmic buckets (``BUCKETS_PER_DECADE``
per decade from 1 us to 100 s, about 7.5% wide), so that p50 and p99 can be read for any
window: ``latency_between(before, after)`` of two ``stats()``, as the daemon takes a step's.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..auth import SUMMARY_SECONDS, Schedule

logger = logging.getLogger(__name__)

BUCKETS_PER_DECADE = 32
_LOWEST = 1e-6
_DECADES = 8
_BOUNDS = [_LOWEST * 10 ** (i / BUCKETS_PER_DECADE) for i in range(1, _DECADES * BUCKETS_PER_DECADE + 1)]
"""Upper bounds (seconds) of each bucket but the last, which takes everything above."""


class LatencyHistogram:
    """Counts of durations per bucket, with their sum."""

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.sum = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self.sum += seconds
        self.count += 1


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of a histogram's counts, in seconds (a bucket's geometric middle)."""
    total = sum(counts)
    if not total:
        return None
    rank = max(math.ceil(q * total), 1)
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            upper = _BOUNDS[min(index, len(_BOUNDS) - 1)]
            return upper * 10 ** (-0.5 / BUCKETS_PER_DECADE)
    raise AssertionError("unreachable")


def latency_summary(counts: Sequence[int], total_seconds: float) -> dict[str, float | None]:
    """p50 and p99 in milliseconds, the sum in seconds and the count, of a histogram's counts."""
    p50, p99 = quantile(counts, 0.5), quantile(counts, 0.99)
    return {
        "count": float(sum(counts)),
        "sum_s": total_seconds,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
    }


def latency_between(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, float | None]:
    """The added latency of the calls between two ``stats()``: p50, p99, sum and count."""
    counts = [b - a for a, b in zip(before["added_latency_buckets"], after["added_latency_buckets"], strict=True)]
    return latency_summary(counts, after["added_latency_sum_s"] - before["added_latency_sum_s"])


class RefusalSummary:
    """Count refused calls by reason; log them in one WARNING per ``interval`` seconds, never one per call.

    The first refusal after a quiet interval asks ``schedule`` (``loop.call_later``'s shape,
    as ``auth.RefusalLog`` takes) to flush ``interval`` seconds later.
    """

    def __init__(self, schedule: Schedule | None = None, interval: float = SUMMARY_SECONDS) -> None:
        self.interval = interval
        self._schedule = schedule
        self._pending: Counter[str] = Counter()
        self._scheduled = False

    def refused(self, reason: str) -> None:
        self._pending[reason] += 1
        if not self._scheduled:
            self._scheduled = True
            schedule = self._schedule if self._schedule is not None else _call_later
            schedule(self.interval, self.flush)

    def flush(self) -> None:
        """Log the refusals counted since the last flush, if any, in one line."""
        self._scheduled = False
        pending, self._pending = self._pending, Counter()
        if pending:
            counts = ", ".join(f"{reason} x{count}" for reason, count in pending.most_common())
            logger.warning(
                "LLM proxy refused %d call(s) in the last %gs: %s", sum(pending.values()), self.interval, counts
            )


def _call_later(delay: float, callback: Any) -> Any:
    return asyncio.get_running_loop().call_later(delay, callback)
