"""IQL / VDN / QMIX learn (issue 3; margins from issue 15): spread against standing still, and VDN
with optimism reaching the optimum of the coordination game. Moved from tests/integration/test_qlearning.py."""

from __future__ import annotations

import pytest
from conftest import eval_records, learned_and_still, make_cfg, quiet

from marlcli.trainer import train


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["vdn", "qmix"])
def test_beats_standing_still_on_spread(tmp_path, algo: str, learn_seed) -> None:  # noqa: ANN001
    """Standing still scores about -24 on spread (random -26.4): the margin is over that, on the same episodes."""
    cfg = make_cfg(f"algo={algo}", "env=spread", "env.backend=native", "env.num_envs=64", f"seed={learn_seed(1)}",
                   "algo.eps_anneal_steps=50000",
                   *quiet(tmp_path, total_steps=100_000, eval_interval=0, eval_episodes=100, eval_envs=100))
    final, still = learned_and_still(cfg)
    assert final > still + 2.5, (final, still)


@pytest.mark.slow
def test_vdn_with_optimism_reaches_the_optimum_on_coordination(tmp_path) -> None:  # noqa: ANN001
    cfg = make_cfg("algo=vdn", "env=coordination", "env.backend=native", "env.penalty=-30", "seed=3",
                   "algo.optimism=true", "algo.rollout_steps=1", "algo.batch_episodes=64", "algo.learning_starts=64",
                   "algo.replay_ratio=1.0", "algo.eps_anneal_steps=4000", "algo.eps_end=0.1",
                   *quiet(tmp_path, total_steps=8000, eval_interval=8000))
    assert eval_records(train(cfg))[-1]["eval/return_mean"] == 10.0
