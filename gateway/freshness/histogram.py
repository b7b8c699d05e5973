"""Staleness and lag histograms in log-scaled buckets that every process counts alike.

A duration of ``ms`` milliseconds falls in bucket ``floor(ln(1 + ms) * 20)``: each bucket
is about 5% wide, so a percentile read back from the counts is within 2.5% of the true
value, and a month fits in about 430 buckets. The audit store computes the same bucket
in SQL (``floor(ln(1 + ms) * 20)``), ingest workers count in it in Redis, and counts
from any number of processes add up by bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

BUCKETS_PER_E = 20
"""Buckets per factor of e (about 2.72): the histogram's resolution."""


def bucket_of(ms: float) -> int:
    """The bucket a duration of ``ms`` milliseconds falls in (negative ones count as 0)."""
    return math.floor(math.log1p(max(0.0, ms)) * BUCKETS_PER_E)


def bucket_value(bucket: int) -> float:
    """The duration a bucket stands for, in milliseconds: the middle of its range."""
    return math.expm1((bucket + 0.5) / BUCKETS_PER_E)


def quantiles(counts: Mapping[int, int], qs: Iterable[float]) -> list[float | None]:
    """The ``qs`` quantiles (0 to 1) of the durations counted per bucket, in milliseconds.

    Each is the value of the bucket that holds the ``ceil(q * total)``-th smallest
    duration (nearest rank); None for each when nothing was counted.
    """
    wanted = list(qs)
    total = sum(counts.values())
    if total <= 0:
        return [None] * len(wanted)
    ordered = sorted(counts.items())
    answers: list[float | None] = []
    for q in wanted:
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket, count in ordered:
            seen += count
            if seen >= rank:
                answers.append(round(bucket_value(bucket), 1))
                break
    return answers


def merge(into: dict[int, int], counts: Mapping[int, int]) -> dict[int, int]:
    """Add ``counts`` to ``into`` by bucket; returns ``into``."""
    for bucket, count in counts.items():
        into[bucket] = into.get(bucket, 0) + count
    return into
