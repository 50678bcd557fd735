"""``marlcli.stats``, the one copy of the statistics: known answers for each formula.

The interval half-widths are the formulas the tables used before there was one copy
(``1.96 * sd / sqrt(n)`` in ``eval/return_ci95``, ``marl eval``'s ``all`` row and the bench; the
Student-t table of the experiments; the percentile bootstrap of ``marl report``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marlcli import stats
from marlcli.evaluate import EvalResult


def test_mean_and_empty() -> None:
    assert stats.mean([1, 2, 3, 4]) == 2.5
    assert math.isnan(stats.mean([]))


def test_iqm_known_values() -> None:
    assert stats.iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # drops 1 and 4
    assert stats.iqm([10, 1, 2, 3, 100]) == pytest.approx(5.0)  # int(1.25) = 1 dropped each end: mean(2, 3, 10)
    assert stats.iqm([0, 0, 1, 1, 1, 1, 100, -100]) == pytest.approx(0.75)  # middle four: 0, 1, 1, 1
    assert stats.iqm([7.0]) == 7.0
    assert math.isnan(stats.iqm([]))


def test_iqm_matches_scipy_trim_mean() -> None:
    from scipy.stats import trim_mean

    x = np.random.default_rng(3).normal(size=13)
    assert stats.iqm(x) == pytest.approx(trim_mean(x, 0.25))


def test_ci95_known_answers() -> None:
    # [1, 2, 3, 4]: sd (n - 1) = sqrt(5/3), so 1.96 * sqrt(5/3) / 2
    assert stats.ci95([1, 2, 3, 4]) == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)
    assert stats.ci95([2.0, 4.0, 6.0]) == pytest.approx(1.96 * 2.0 / math.sqrt(3))
    assert stats.ci95([5.0]) == 0.0 and stats.ci95([]) == 0.0  # no spread to estimate
    assert stats.ci95(torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)) == pytest.approx(2.263213, abs=1e-6)


def test_eval_return_ci95_is_stats_ci95_of_episode_means() -> None:
    """``eval/return_ci95``: the interval over episodes of the all-agent mean return, as before (torch's std)."""
    returns = torch.tensor([[1.0, 3.0], [3.0, 5.0], [5.0, 7.0], [0.0, 1.0]], dtype=torch.float64)
    s = EvalResult(agents=["a", "b"], returns=returns).summary()
    per_ep = returns.mean(1)
    assert s["eval/return_ci95"] == pytest.approx(1.96 * per_ep.std().item() / math.sqrt(4), rel=1e-12)
    assert s["eval/return_ci95"] == pytest.approx(stats.ci95([2.0, 4.0, 6.0, 0.5]))
    one = EvalResult(agents=["a"], returns=torch.tensor([[3.0]], dtype=torch.float64)).summary()
    assert one["eval/return_ci95"] == 0.0


def test_t_interval_known_answers() -> None:
    # n = 3: mean 2, sd 1, t(2 dof) = 4.30
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2.0 - 4.30 / math.sqrt(3), 2.0 + 4.30 / math.sqrt(3)))
    # n = 11 (10 dof, past the table): the normal 1.96; sd = sqrt(11), so the half-width is 1.96
    assert stats.t_interval(list(range(1, 12))) == pytest.approx([6.0 - 1.96, 6.0 + 1.96])
    assert stats.t_interval([3.0]) == [3.0, 3.0]


def test_bootstrap_ci_known_answers() -> None:
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert stats.bootstrap_ci([5.0]) == (5.0, 5.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    # two values {0, 1}: resampled means are 0, 0.5, 1 with prob 1/4, 1/2, 1/4 -> the 95% interval is [0, 1]
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # large sample: the bootstrap CI of the mean approaches mean +- ci95 (1.96 sd / sqrt(n))
    x = np.random.default_rng(0).normal(10.0, 2.0, size=400)
    lo, hi = stats.bootstrap_ci(x)
    assert lo == pytest.approx(x.mean() - stats.ci95(x), abs=0.03)
    assert hi == pytest.approx(x.mean() + stats.ci95(x), abs=0.03)


def test_bootstrap_ci_is_deterministic() -> None:
    x = [1.0, 4.0, 2.0, 8.0]
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
