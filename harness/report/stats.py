"""Small statistics used by leaderboard, compare and check: means with t intervals, paired differences."""

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
