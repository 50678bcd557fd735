"""MADDPG and COMA learn on spread (issue 5; margins from issue 15), against standing still on the
same evaluation episodes. Moved from tests/integration/test_offpolicy_ac.py."""

from __future__ import annotations

import pytest
from conftest import learned_and_still, make_cfg, quiet

SPREAD_C = ["algo=maddpg", "env=spread", "env.backend=native", "env.continuous_actions=true"]


@pytest.mark.slow
def test_maddpg_learns_continuous_spread(tmp_path, learn_seed) -> None:  # noqa: ANN001
    """Standing still (the zero action) scores about -24 here, random about -25: the margin is over standing still."""
    cfg = make_cfg(*SPREAD_C, f"seed={learn_seed(0)}", *quiet(tmp_path, eval_episodes=50, total_steps=20000, eval_interval=0))
    final, still = learned_and_still(cfg)
    assert final > still + 1.8, (final, still)


@pytest.mark.slow
def test_coma_learns_discrete_spread(tmp_path, learn_seed) -> None:  # noqa: ANN001
    """Issue 15: 40k steps ended at -25.51 against -25 once. 80k steps, sampled actions at evaluation.

    COMA only reaches standing still's level in this budget (margins -0.11, 1.39, 1.42 on
    seeds 0, 2, 3), so this test only catches a learner that does worse than doing nothing
    (rewards zeroed: -36); it cannot see a cut bootstrap (-0.18). Reported on issue 15.
    """
    cfg = make_cfg("algo=coma", "env=spread", "env.backend=native", f"seed={learn_seed(0)}",
                   *quiet(tmp_path, total_steps=80000, eval_interval=0, eval_episodes=100, eval_envs=100,
                          eval_deterministic=False))
    final, still = learned_and_still(cfg)
    assert final > still - 1.0, (final, still)
