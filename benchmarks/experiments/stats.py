"""Confidence intervals for the sweep's figures.

* :func:`mean_ci`: the Student-t interval of a mean over independent replications (each
  replication a run with its own seed, starting from an empty system). A p99 is computed per
  replication and the interval is over those R values: honest for a quantile of
  autocorrelated waits, unlike an interval that treats every request as independent.
* :func:`quantile_ci`: the distribution-free order-statistic interval for a quantile of n
  i.i.d. samples (binomial ranks). Queueing waits are positively correlated, so for them it is
  too narrow; it is used for single-run figures and labelled so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Interval", "mean_ci", "quantile_ci", "t_975"]

# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(df: int) -> float:
    """t(0.975, df); the normal 1.96 beyond 30 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    lo: float
    hi: float

    def as_list(self) -> list[float]:
        return [self.estimate, self.lo, self.hi]


def mean_ci(values: Sequence[float] | npt.NDArray[np.float64]) -> Interval:
    """Mean and 95% t-interval of independent values (a point interval for one value)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return Interval(m, m, m)
    half = t_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(m, m - half, m + half)


def _binom_cdf(k: npt.NDArray[np.int64], n: int, p: float) -> npt.NDArray[np.float64]:
    i = np.arange(n + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in i])
    pmf = np.exp(logc + i * math.log(p) + (n - i) * math.log1p(-p))
    cdf = np.cumsum(pmf)
    return np.asarray(cdf[np.clip(k, 0, n)], dtype=np.float64)


def quantile_ci(samples: Sequence[float] | npt.NDArray[np.float64], q: float) -> Interval:
    """Sample quantile ``q`` and its 95% order-statistic interval (i.i.d. assumption).

    The interval is [x_(l), x_(u)] with ranks from Binomial(n, q) quantiles 0.025 and
    0.975; at the ends of the sample it is open (the min or max is used).
    """
    x = np.sort(np.asarray(samples, dtype=np.float64))
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    cdf = _binom_cdf(np.arange(n + 1), n, q)
    lo_rank = int(np.searchsorted(cdf, 0.025))  # P(B <= lo_rank - 1) < 0.025
    hi_rank = int(np.searchsorted(cdf, 0.975)) + 1
    return Interval(float(np.quantile(x, q)), float(x[max(lo_rank - 1, 0)]),
                    float(x[min(hi_rank - 1, n - 1)]))
