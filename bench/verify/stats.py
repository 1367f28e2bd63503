"""Latency percentiles, the same way for every contender."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted values (NaN if there are none)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def latency_summary(seconds: Iterable[float]) -> dict[str, float]:
    """p50, p90, p99 and the maximum, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(percentile(ordered, 1.0) * 1000, 2),
    }
