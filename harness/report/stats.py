"""Small statistics used by leaderboard, compare and check: means with t intervals, CI-separated levels, paired
differences."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _st


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval; half-width is NaN for n < 2."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan
    sem = float(x.std(ddof=1) / math.sqrt(x.size))
    return m, float(_st.t.ppf(0.5 + level / 2, x.size - 1) * sem)


def separated_levels(intervals: Sequence[tuple[float, float]]) -> list[int]:
    """The largest set of ``(mean, half_width)`` intervals that are pairwise disjoint, as indices (best first by
    mean): how many levels a ranking has beyond its confidence intervals.  Intervals whose half-width is NaN
    (fewer than 2 seeds) take no part.  Disjoint means strictly: one's upper end below the other's lower end.
    Greedy by upper end (interval scheduling), which is optimal."""
    ok = [(m - h, m + h, i) for i, (m, h) in enumerate(intervals) if not (math.isnan(m) or math.isnan(h))]
    chosen, last_high = [], -math.inf
    for low, high, i in sorted(ok, key=lambda t: (t[1], t[0])):
        if low > last_high:
            chosen.append(i)
            last_high = high
    return sorted(chosen, key=lambda i: -intervals[i][0])


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a - b over paired observations, its t interval, and the paired t-test p-value."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    m, half = mean_ci(d, level)
    if d.size < 2:
        p = math.nan
    elif np.allclose(d, d[0]):  # zero variance: the t statistic is undefined
        p = 1.0 if d[0] == 0 else 0.0
        half = 0.0
    else:
        p = float(_st.ttest_1samp(d, 0.0).pvalue)
    return PairedDifference(int(d.size), m, m - half, m + half, p)
