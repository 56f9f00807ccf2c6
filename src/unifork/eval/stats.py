"""Counts to reported rates with a Wilson 95% interval, and means of repeated measurements with a Student-t one,
so small evaluation sets and few seeds show their noise."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Mapping

from scipy.stats import t as student_t

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a proportion correct/total.

    Unlike the normal approximation p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at
    0/n or n/n, which is where small per-category evaluations often land. (0, 1) when total is 0.
    """
    if total < 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p, n, z2 = correct / total, total, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(correct: Mapping[str, int], total: Mapping[str, int], keys: Iterable[str]) -> dict:
    """Per key and "overall" (summed over `keys`): accuracy, ci95 [lo, hi] and the counts behind them.

    Returns {"accuracy": {key: float}, "ci95": {key: [lo, hi]}, "counts": {key: {"correct", "total"}}}.
    """
    keys = list(keys)
    counts = {k: (correct.get(k, 0), total.get(k, 0)) for k in keys}
    counts["overall"] = (sum(c for c, _ in counts.values()), sum(t for _, t in counts.values()))
    return {
        "accuracy": {k: round(c / t, 4) if t else 0.0 for k, (c, t) in counts.items()},
        "ci95": {k: [round(v, 4) for v in wilson_interval(c, t)] for k, (c, t) in counts.items()},
        "counts": {k: {"correct": c, "total": t} for k, (c, t) in counts.items()},
    }


def mean_interval(values: list[float]) -> dict:
    """Mean and 95% Student-t interval of repeated measurements (the interval is the mean itself for one value)."""
    mean = statistics.fmean(values)
    half = student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}
