"""The statistics every table of marlcli uses, in one place, so no two tables compute "95% CI" differently.

* :func:`ci95`: the normal-approximation half-width ``1.96 * sd / sqrt(n)`` (``sd`` with
  ``n - 1``), for many samples: per-episode returns (``eval/return_ci95``), the ``all`` row of
  ``marl eval`` and the bench's means.
* :func:`t_interval`: the Student-t interval, for the few-seed tables of the experiments,
  where 1.96 would be too narrow.
* :func:`bootstrap_ci`: the percentile bootstrap of the mean, for ``marl report`` (no normality
  assumed over a handful of seeds), with :func:`iqm` beside the :func:`mean` (Agarwal et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z_95 = 1.96  # two-sided 95% quantile of the standard normal
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # Student t, 95%, by dof
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same results give the same CI every time


def _array(values: Sequence[float] | Any) -> np.ndarray:
    """A float64 vector from a list, a numpy array or a (CPU) tensor."""
    return np.asarray(values, dtype=float).reshape(-1)


def mean(values: Sequence[float] | Any) -> float:
    """The mean; NaN for no values (an empty table cell, not an exception)."""
    x = _array(values)
    return float(x.mean()) if x.size else math.nan


def iqm(values: Sequence[float] | Any) -> float:
    """Interquartile mean: the mean of the middle 50% (``int(0.25 n)`` dropped at each end).

    Same as ``scipy.stats.trim_mean(values, 0.25)``, rliable's IQM for one task.
    """
    x = np.sort(_array(values))
    if x.size == 0:
        return math.nan
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def ci95(values: Sequence[float] | Any) -> float:
    """Half-width of the normal-approximation 95% interval of the mean: ``1.96 * sd / sqrt(n)``; 0 below 2 values."""
    x = _array(values)
    if x.size < 2:
        return 0.0
    return Z_95 * float(x.std(ddof=1)) / math.sqrt(x.size)


def t_interval(values: Sequence[float] | Any) -> list[float]:
    """``[low, high]``: the 95% Student-t interval of the mean (the experiments' few-seed tables).

    Beyond 9 degrees of freedom the normal 1.96 is used; one value gives ``[x, x]``.
    """
    x = _array(values)
    if x.size < 2:
        return [float(x.mean())] * 2
    half = T_975.get(x.size - 1, Z_95) * x.std(ddof=1) / math.sqrt(x.size)
    return [float(x.mean() - half), float(x.mean() + half)]


def bootstrap_ci(values: Sequence[float] | Any, confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the values with replacement ``resamples`` times.

    One value gives a zero-width interval at that value (there is no spread to estimate).
    """
    x = _array(values)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
