"""Statistics over seeds: mean and a 95% confidence interval from Student's t distribution.

The t quantile is computed here (numerical integration of the t density, then bisection) so that
the library needs no SciPy; it matches tabulated values to better than 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class MeanCI(NamedTuple):
    """Mean of a sample with its 95% (or other) confidence interval ``mean +- half_width``."""

    mean: float
    half_width: float
    std: float
    sem: float
    n: int

    @property
    def lo(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half_width

    @property
    def hi(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half_width

    def as_dict(self) -> dict[str, float]:
        """Plain JSON-friendly dict (``mean, ci, std, sem, n``)."""
        return {"mean": self.mean, "ci": self.half_width, "std": self.std, "sem": self.sem, "n": self.n}


def _t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with ``df`` degrees of freedom at ``x >= 0`` (Simpson's rule on [0, x])."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # Substituting x = tan(u) maps [0, inf) to [0, pi/2) and makes the integrand smooth for every df.
    u_max = math.atan(x)
    n = 2000
    u = np.linspace(0.0, u_max, n + 1)
    t = np.tan(u)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df)) / np.cos(u) ** 2
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return 0.5 + float(np.dot(w, f)) * (u_max / n) / 3.0


def t_quantile(p: float, df: int) -> float:
    """Quantile ``q`` with ``P(T <= q) = p`` for Student's t with ``df >= 1`` degrees of freedom.

    Raises:
        ValueError: ``p`` outside (0, 1) or ``df < 1``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p}")
    if df < 1 or int(df) != df:
        raise ValueError(f"t_quantile: df must be a positive integer, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """Mean and two-sided confidence interval of ``values`` (one value per seed).

    The half width is ``t_{(1+c)/2, n-1} * s / sqrt(n)`` with the sample standard deviation ``s``
    (ddof = 1). With a single value the interval is undefined and reported as NaN.

    Raises:
        ValueError: no values, a non-finite value, or ``confidence`` outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_ci: non-finite values in {x.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_ci: confidence must lie in (0, 1), got {confidence}")
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, float("nan"), float("nan"), float("nan"), 1)
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    half = t_quantile(0.5 * (1.0 + confidence), n - 1) * sem
    return MeanCI(mean, half, std, sem, n)
